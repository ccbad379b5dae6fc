"""``difflab serve``: a local web page and JSON API to sample, guide, edit and explore trained runs.

:func:`difflab.serve.app.create_app` builds the FastAPI app for runs loaded with
:func:`difflab.serve.models.load_models`; generation runs as jobs in one worker thread per model
(:mod:`difflab.serve.jobs`). FastAPI and uvicorn are the ``serve`` extra, imported only by
:mod:`difflab.serve.app` (so the command line's help works without them)."""
