"""Train `sdlab eval`'s judges, apart from the captioner and from each other (own architecture, input, seed).

python scripts/train_eval_classifier.py cnn          # src/sdlab/models/digits-eval-classifier.safetensors
python scripts/train_eval_classifier.py normalised   # src/sdlab/models/digits-eval-normalised.safetensors

Both train on the training split only; the held-out split (FID's reference) is seen here only to print accuracy.
"""

import argparse
import time

from sdlab.digits.classifier import (
    EVAL_CLASSIFIER,
    EVAL_CLASSIFIER_NORMALISED,
    DigitClassifier,
    NormalisedDigitNet,
    accuracy,
    augment,
    augment_strokes,
    train_classifier,
)
from sdlab.digits.data import train_test_split

# the captioner uses the training run's seed (0); a judge must not share its mistakes, nor the other judge's
RECIPES = {
    "cnn": dict(architecture=DigitClassifier, augmentation=augment, seed=7, epochs=8, path=EVAL_CLASSIFIER),
    "normalised": dict(
        architecture=NormalisedDigitNet,
        augmentation=augment_strokes,
        seed=2026,
        epochs=12,
        path=EVAL_CLASSIFIER_NORMALISED,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("judge", choices=RECIPES)
    recipe = dict(RECIPES[parser.parse_args().judge])
    path = recipe.pop("path")
    train, test = train_test_split()
    start = time.perf_counter()
    model = train_classifier(train.images, train.labels, **recipe)
    model.save(path)
    print(
        f"held-out accuracy {accuracy(model, test.images, test.labels):.4f} on {len(test)} digits, "
        f"trained in {time.perf_counter() - start:.0f} s -> {path}"
    )


if __name__ == "__main__":
    main()
