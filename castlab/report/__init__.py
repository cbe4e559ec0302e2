"""One report per pipeline run (``castlab report RUN``): :mod:`~castlab.report.collect` reads what the stages wrote
(and Label Studio's tasks for lead times), :mod:`~castlab.report.render` writes ``report/`` (HTML, Markdown, CSV)."""
