"""Reviews move the pipeline: Label Studio webhooks → Prefect events → the next stage's deployment.

Modules: :mod:`~castlab.reviews.secret` (the webhook shared secret), :mod:`~castlab.reviews.events` (Prefect
events built from Label Studio payloads), :mod:`~castlab.reviews.hooks` (webhooks on castlab's projects),
:mod:`~castlab.reviews.advance` (which run a project's review belongs to, when it is complete, what comes next)
and :mod:`~castlab.reviews.reconcile` (polling for what a dropped webhook missed). The receiver, a web app, lives
in ``flows/receiver.py``; the flows that act on the events in ``flows/review_advance.py``.
"""
