"""Reading a run, torch-free: the table of models (`results`), their paired comparisons (`comparisons`), the
stopping rule (`stopping`), the plots and the rendered report. `spin report`, the control plane's page and API,
and its reconciler use it."""
