"""Reading a run, torch-free: the table of models (`results`), the stopping rule (`stopping`), the plots and the
rendered report. `spin report`, the control plane's page and its reconciler use it."""
