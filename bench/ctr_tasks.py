"""A generated family of CTR-like tasks, for laws that must hold on data never seen.

`draw_task(rng)` draws one task: 1-30 categorical fields (log-uniform) with vocabularies of
3 to 10^5 ids (log-uniform), ids drawn from a Zipf law with exponent 1.05-2
(so large vocabularies leave most ids unseen), planted informative ids among
the frequent ones of each field whose weights make the label, an embedding model with 0-2 hidden
layers, one of the six optimizers at a learning rate drawn over a decade
around its usual one, batch 64-2048 and 1-6 epochs, at most `max_steps`
training steps. `build(task)` gives (model, optimizer, x, y); tests and
bench/l21_sweep.py use it.
"""

import dataclasses

import keras
import numpy as np

import group_lasso_tf as gl

# Learning rates around which each optimizer's is drawn (x 1/sqrt(10) .. sqrt(10)).
LEARNING_RATES = {"adam": 3e-3, "amsgrad": 3e-3, "adahessian": 1e-2, "adagrad": 0.05,
                  "momentum": 0.03, "ftrl": 0.1}
OPTIMIZERS = {"adam": gl.GroupAdam, "amsgrad": gl.GroupAMSGrad,
              "adahessian": gl.GroupAdaHessian, "adagrad": gl.GroupAdagrad,
              "momentum": gl.GroupMomentum, "ftrl": gl.GroupFtrl}


@dataclasses.dataclass
class Task:
    seed: int
    vocab_sizes: list
    zipf: float
    informative: float
    dim: int
    hidden: tuple
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int
    samples: int

    def describe(self):
        return (f"seed={self.seed} fields={len(self.vocab_sizes)} vocab={self.vocab_sizes} "
                f"zipf={self.zipf:.2f} dim={self.dim} hidden={self.hidden} "
                f"{self.optimizer} lr={self.learning_rate:.3g} batch={self.batch_size} "
                f"epochs={self.epochs} samples={self.samples}")


def draw_task(rng, optimizer=None, epochs=None, max_steps=300, min_rows=200, max_rows=None,
              max_fields=30):
    """One task; `optimizer` and `epochs` fix those draws. Its training data
    holds at least `min_rows` distinct ids (trained rows), so that a
    sparsity is resolved to better than one point (draws with fewer are
    drawn again), and with `max_rows` the vocabularies add up to at most
    that many (the largest are cut to a common size; a cheaper task for the
    tests)."""
    while True:
        task = _draw(rng, optimizer, epochs, max_steps, max_rows, max_fields)
        x, _ = data(task)
        if sum(len(np.unique(column)) for column in x.T) >= min_rows:
            return task


def _draw(rng, optimizer, epochs, max_steps, max_rows, max_fields):
    # Log-uniform: as many tasks with 1-5 fields as with 6-30.
    fields = int(np.exp(rng.uniform(0, np.log(max_fields + 1))))
    vocab = np.exp(rng.uniform(np.log(3), np.log(1e5), size=fields)).astype(int)
    if max_rows is not None and vocab.sum() > max_rows:
        vocab = np.minimum(vocab, _water_level(vocab, max_rows))
    optimizer = optimizer or str(rng.choice(list(OPTIMIZERS)))
    batch = int(2 ** rng.integers(6, 12))
    epochs = int(epochs or rng.integers(1, 7))
    samples = int(min(20000, max_steps * batch // epochs))
    samples = max(samples, batch)
    return Task(seed=int(rng.integers(1 << 31)), vocab_sizes=[int(v) for v in vocab],
                zipf=float(rng.uniform(1.05, 2.0)), informative=float(rng.uniform(0.02, 0.3)),
                dim=int(rng.choice([4, 8, 16])),
                hidden=tuple(int(u) for u in rng.choice([16, 32, 64], size=rng.integers(0, 3))),
                optimizer=optimizer,
                learning_rate=float(LEARNING_RATES[optimizer] * 10 ** rng.uniform(-0.5, 0.5)),
                batch_size=batch, epochs=epochs, samples=samples)


def _water_level(sizes, total):
    """The largest cap c with sum(min(sizes, c)) <= total."""
    below = 0
    ordered = np.sort(sizes)
    for i, size in enumerate(ordered):
        if below + size * (len(ordered) - i) > total:
            return max(1, (total - below) // (len(ordered) - i))
        below += size
    return int(ordered[-1])


def data(task, samples=None, stream=0):
    """(ids [samples, fields] int64, labels [samples] float32) of the task:
    `stream` 0 is the training data, other streams fresh samples of the same
    task (held-out data)."""
    structure = np.random.default_rng(task.seed)
    rng = np.random.default_rng([task.seed, stream])
    n = samples or task.samples
    columns, logit = [], np.zeros(n)
    for vocab in task.vocab_sizes:
        # Zipf ranks mapped to ids through a fixed permutation, so frequent
        # ids are spread over the table.
        by_rank = structure.permutation(vocab)
        # Planted informative ids: a fraction of the 200 most frequent ones
        # (enough samples to learn them); the other ids carry nothing.
        weights = np.zeros(vocab)
        planted = by_rank[:max(1, int(round(task.informative * min(vocab, 200))))]
        weights[planted] = structure.normal(0, 1.5, size=planted.size)
        ids = by_rank[np.minimum(rng.zipf(task.zipf, size=n), vocab) - 1]
        logit += weights[ids]
        columns.append(ids)
    logit = (logit - logit.mean()) / max(logit.std(), 1e-9) * 1.5 - 1.0
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype("float32")
    return np.stack(columns, axis=1).astype("int64"), y


def build(task, l21=1e-5, **optimizer_kwargs):
    """(model to fit, optimizer, x, y); the model is compiled."""
    keras.utils.set_random_seed(task.seed % (1 << 30))
    x, y = data(task)
    inp = keras.Input((len(task.vocab_sizes),), dtype="int64")
    embedded = [keras.layers.Flatten()(keras.layers.Embedding(v, task.dim,
                                                              name=f"embedding_{i}")(inp[:, i:i + 1]))
                for i, v in enumerate(task.vocab_sizes)]
    h = keras.layers.Concatenate()(embedded) if len(embedded) > 1 else embedded[0]
    for units in task.hidden:
        h = keras.layers.Dense(units, activation="relu")(h)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(h))
    optimizer = OPTIMIZERS[task.optimizer](learning_rate=task.learning_rate, l21=l21,
                                           **optimizer_kwargs)
    if task.optimizer == "adahessian":
        model = gl.hessian.wrap(model)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    return model, optimizer, x, y
