"""Search many CNN-LSTM configurations with Optuna on Ray Tune: python search.py --num-samples 50 [options]
(the same as `emoma search`)."""

from emoma.cli import search_main as main

if __name__ == "__main__":
    main(prog="search.py")
