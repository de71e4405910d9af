"""Cross-validate one CNN-LSTM configuration: python cv.py [--config default] [options] (the same as `emoma cv`)."""

from emoma.cli import cv_main as main

if __name__ == "__main__":
    main(prog="cv.py")
