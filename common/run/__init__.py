"""Running recipes: the runner (one worker subprocess per backend and seed), the worker itself, the Ray
executor, sweeps, MLflow tracking and the weights fetcher.

Above common/recipe and common/stages; nothing below imports it. Kept empty of imports."""
