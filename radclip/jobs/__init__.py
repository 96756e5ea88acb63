"""The jobs layer: one module per DVC stage (``radclip.jobs.<stage>``).

A job reads typed params and its upstream artifacts and writes **all** of its outputs:
artifacts, metrics under ``paths.reports``, and ``reports/params/<stage>.yaml``, the params it
actually ran with (profile overlay and sweep best params applied). ``pipelines/<stage>.py``
and the CLI call jobs and nothing else.
"""
