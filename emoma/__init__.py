"""EmoMA: honest cross-validation and hyperparameter search for CNN-LSTM stress/emotion recognition."""

__version__ = "0.1.0"
