"""EmoMA: honest cross-validation and hyperparameter search for CNN-LSTM stress/emotion recognition.

`emoma.cross_validate(df, config="context")` and `emoma.search(df, num_samples=20)` are the Python API
(`emoma.api`); they import torch, Ray and Optuna only when called.
"""

__version__ = "0.2.0"
__all__ = ["cross_validate", "search"]


def __getattr__(name):
    if name in __all__:
        from emoma import api

        return getattr(api, name)
    raise AttributeError(f"module 'emoma' has no attribute {name!r}")
