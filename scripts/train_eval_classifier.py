"""Train the evaluation classifier that `sdlab eval` uses, apart from the captioner (its own seed).

python scripts/train_eval_classifier.py     # writes src/sdlab/models/digits-eval-classifier.safetensors
"""

from sdlab.digits.classifier import EVAL_CLASSIFIER, accuracy, train_classifier
from sdlab.digits.data import train_test_split

SEED = 7  # the captioner uses the training run's seed (0); the judge must not share its mistakes


def main() -> None:
    train, test = train_test_split()
    model = train_classifier(train.images, train.labels, seed=SEED, epochs=8)
    model.save(EVAL_CLASSIFIER)
    print(
        f"held-out accuracy {accuracy(model, test.images, test.labels):.4f} on {len(test)} digits -> {EVAL_CLASSIFIER}"
    )


if __name__ == "__main__":
    main()
