"""Reviews move the pipeline: Label Studio webhooks → Prefect events → the next stage's deployment.

Modules: :mod:`~castlab.reviews.secret` (the webhook shared secret), :mod:`~castlab.reviews.events` (Prefect events
built from Label Studio payloads), :mod:`~castlab.reviews.receiver` (the 127.0.0.1 webhook receiver),
:mod:`~castlab.reviews.advance` (which run a project's review belongs to, when it is complete, what comes next) and
:mod:`~castlab.reviews.reconcile` (polling for what a dropped webhook missed).
"""
