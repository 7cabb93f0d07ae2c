"""SPIN as jobs, on floors; each imports only what lies below it (pyproject.toml's import-linter contracts):

__main__, cli     the `spin` command line
demo/             the embedded default: tiny model, arithmetic task, the driver
baseline/         continued SFT at equal compute, and the SFT trainer
iteration/        one SPIN iteration = one Ray Job: the controller and its stages
report/           reading a run, torch-free: results, stopping rule, plots, rendering
progress          stage progress for consoles, logs and the control plane
metrics           the typed iter_<k>/metrics.json
config, storage, records, sft_rows, chat, hf      the shared floor: config, run folder, Arrow records,
                                                  SFT row shapes, the chat encoding, Hugging Face I/O
spin/             the pure core: losses, log-probs, pairs, collation, metrics, schedule, guard, stopping
"""
