"""Serving export of pruned tables, sparsity tools, and the magnitude-pruning baseline."""

import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import group_lasso_tf as gl
from group_lasso_tf import export, pruning, sparsity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import criteo_deepfm  # noqa: E402
import ctr_data  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    """The Criteo example model trained with GroupAdam (row sparsity > 50%)."""
    keras.utils.set_random_seed(0)
    data = ctr_data.load_criteo()
    model = criteo_deepfm.build_deepfm(data.vocab_sizes, data.train.dense.shape[1])
    model.compile(optimizer=gl.GroupAdam(learning_rate=2e-3, l1=1e-5, l21=1e-3),
                  loss="binary_crossentropy")
    model.fit([data.train.categorical, data.train.dense], data.train.label, batch_size=256,
              epochs=2, verbose=0)
    return model, data


def random_inputs(data, n=500, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, rows, size=n) for rows in data.vocab_sizes], axis=1)
    return [ids.astype("int32"), rng.normal(size=(n, data.train.dense.shape[1])).astype("float32")]


def test_export_predicts_bit_for_bit_and_shrinks(trained, tmp_path):
    model, data = trained
    stats = sparsity.embedding_sparsity(model)
    zero = sum(s.zero_rows for s in stats.values())
    rows = sum(s.rows for s in stats.values())
    assert zero / rows > 0.5
    report = export.export_pruned(model, str(tmp_path / "served"))
    loaded = tf.saved_model.load(str(tmp_path / "served"))
    for x in ([data.test.categorical, data.test.dense], random_inputs(data)):
        np.testing.assert_array_equal(loaded.serve(x).numpy(), model(x, training=False).numpy())
    # Variable bytes shrink by exactly the removed rows (plus one zero row per table).
    dim = 8
    removed = sum(r - k for r, k in report.tables.values())
    assert removed == zero
    assert report.variable_bytes_before - report.variable_bytes_after == (removed - len(stats)) * dim * 4
    assert report.disk_bytes > 0
    # Ids unknown to a table (negative, past its end) gather the zero vector,
    # as an id whose row was removed does.
    x = random_inputs(data, n=50, seed=2)
    field = 3
    table = next(layer for layer in model.layers if layer.name == f"embedding_{field}")
    removed_id = int(np.flatnonzero(np.all(table.embeddings.numpy() == 0, axis=1))[0])
    with_removed = [x[0].copy(), x[1]]
    with_removed[0][:, field] = removed_id
    expected = model(with_removed, training=False).numpy()
    for unknown in (-1, data.vocab_sizes[field], 10**9):
        with_unknown = [x[0].copy(), x[1]]
        with_unknown[0][:, field] = unknown
        np.testing.assert_array_equal(loaded.serve(with_unknown).numpy(), expected)


def test_exported_model_serves_without_the_package(trained, tmp_path):
    model, data = trained
    export.export_pruned(model, str(tmp_path / "served"))
    x = random_inputs(data, seed=1)
    np.save(tmp_path / "cat.npy", x[0])
    np.save(tmp_path / "dense.npy", x[1])
    expected = model(x, training=False).numpy()
    code = textwrap.dedent(f"""
        import sys, numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(tmp_path / 'served')!r})
        out = m.signatures["serving_default"](
            categorical=tf.constant(np.load({str(tmp_path / 'cat.npy')!r})),
            dense_features=tf.constant(np.load({str(tmp_path / 'dense.npy')!r})))
        np.save({str(tmp_path / 'out.npy')!r}, list(out.values())[0].numpy())
        assert not any(name.startswith("group_lasso_tf") for name in sys.modules)
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    # saved_model_cli, what TF Serving does when it loads a model.
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run", "--dir",
           str(tmp_path / "served"), "--tag_set", "serve", "--signature_def", "serving_default",
           "--inputs", f"categorical={tmp_path / 'cat.npy'};dense_features={tmp_path / 'dense.npy'}",
           "--outdir", str(tmp_path / "cli_out")]
    proc = subprocess.run(cli, cwd="/", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = os.listdir(tmp_path / "cli_out")
    assert len(outputs) == 1
    np.testing.assert_array_equal(np.load(tmp_path / "cli_out" / outputs[0]), expected)


def test_export_command_line(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m.keras")
    def start(*args):
        return subprocess.Popen(
            [sys.executable, "-m", "group_lasso_tf.export", *map(str, args)], cwd="/",
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                     PYTHONPATH=os.path.dirname(os.path.dirname(gl.__file__))),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(proc):
        proc.stdout_text, proc.stderr_text = proc.communicate(timeout=300)
        return proc

    # A corrupted file and a non-Keras path fail clearly and write nothing
    # (run beside the export itself: CI has 2 cores).
    (tmp_path / "bad.keras").write_bytes(os.urandom(1000))
    (tmp_path / "notes.txt").write_text("hello")
    procs = [start(tmp_path / "m.keras", tmp_path / "served"),
             start(tmp_path / "bad.keras", tmp_path / "out1"),
             start(tmp_path / "notes.txt", tmp_path / "out2")]
    export, bad, notes = [finish(p) for p in procs]
    assert export.returncode == 0, export.stderr_text[-3000:]
    assert "variable bytes" in export.stdout_text
    assert os.path.exists(tmp_path / "served" / "saved_model.pb")
    assert (bad.returncode == 2 and "cannot load" in bad.stderr_text
            and "nothing written" in bad.stderr_text), bad.stderr_text[-3000:]
    assert notes.returncode == 2 and "not a .keras model file" in notes.stderr_text
    again = finish(start(tmp_path / "m.keras", tmp_path / "served"))  # destination exists
    assert again.returncode == 2 and "already exists" in again.stderr_text
    assert not os.path.exists(tmp_path / "out1") and not os.path.exists(tmp_path / "out2")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".export-")]


def _partly_trained_embedding():
    """Embedding(20, 4) trained on ids < 10 only: rows 10..19 are never trained."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((2,), dtype="int32")
    out = keras.layers.Dense(1)(keras.layers.Flatten()(keras.layers.Embedding(20, 4)(ids)))
    model = keras.Model(ids, out)
    model.compile(optimizer=gl.GroupAdam(learning_rate=0.05, l21=0.02), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, size=(256, 2)).astype("int32")
    model.fit(x, (x[:, 0] % 2).astype("float32"), epochs=3, verbose=0)
    return model


def test_table_with_every_row_zero_exports(tmp_path):
    """A fixed table the group lasso emptied exports too (TensorFlow's static
    tables cannot be empty): every id reads zeros, as in the trained model."""
    inputs = keras.Input(shape=(3,), dtype="int64")
    x = keras.layers.Embedding(10, 4, embeddings_initializer="zeros", name="emb")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    report = export.export_pruned(model, str(tmp_path / "served"))
    assert report.tables["emb"] == (10, 0)
    served = tf.saved_model.load(str(tmp_path / "served"))
    ids = np.array([[0, 3, 9], [1, 2, 5]], np.int64)
    np.testing.assert_array_equal(served.serve(tf.constant(ids)).numpy(),
                                  model.predict(ids, verbose=0))


def test_never_trained_rows_reported_and_optionally_dropped(tmp_path):
    model = _partly_trained_embedding()
    stats = sparsity.embedding_sparsity(model)
    (table_stats,) = stats.values()
    assert table_stats.never_trained_rows == 10
    serving, tables = export.pruned_model(model, drop_never_trained=True)
    (rows, kept) = list(tables.values())[0]
    assert rows == 20 and kept == 10 - table_stats.zero_rows
    x = np.array([[1, 2], [12, 15]], "int32")
    np.testing.assert_array_equal(export.pruned_model(model)[0](x).numpy(), model(x).numpy())
    original = model.layers[1](x).numpy()
    dropped = serving.layers[1](x).numpy()  # the PrunedEmbedding
    np.testing.assert_array_equal(dropped[0], original[0])
    assert np.all(original[1] != 0) and np.all(dropped[1] == 0)  # never-trained ids: zero vectors


def test_sparsity_logger_history_tensorboard_and_plot(tmp_path):
    keras.utils.set_random_seed(0)
    model = _partly_trained_embedding()
    cb = sparsity.SparsityLogger(log_dir=str(tmp_path / "tb"))
    rng = np.random.default_rng(1)
    x = rng.integers(0, 10, size=(256, 2)).astype("int32")
    history = model.fit(x, (x[:, 0] % 2).astype("float32"), epochs=2, verbose=0, callbacks=[cb])
    path = next(iter(sparsity.embedding_sparsity(model)))
    stats = sparsity.embedding_sparsity(model)[path]
    assert len(history.history["sparsity/" + path]) == 2
    assert history.history["sparsity/" + path][-1] == stats.sparsity
    assert history.history["zero_params/" + path][-1] == stats.zero_params
    assert stats.zero_params >= stats.zero_rows * 4
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
    png = sparsity.plot_sparsity(history, str(tmp_path / "s.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_magnitude_prune_per_table_and_global(rng):
    ids = keras.Input((2,), dtype="int32")
    e1 = keras.layers.Embedding(100, 4)(ids[:, 0])
    e2 = keras.layers.Embedding(50, 4)(ids[:, 1])
    model = keras.Model(ids, keras.layers.Concatenate()([e1, e2]))
    tables = [layer.embeddings for layer in model.layers if isinstance(layer, keras.layers.Embedding)]
    for t in tables:
        t.assign(rng.normal(size=t.shape) * rng.uniform(0.1, 2, size=(t.shape[0], 1)))
    norms = [np.linalg.norm(t.numpy(), axis=1) for t in tables]
    result = pruning.magnitude_prune(model, 0.6)
    assert sorted(result.values()) == [0.6, 0.6]
    for t, n in zip(tables, norms):
        zero = np.all(t.numpy() == 0, axis=1)
        assert zero.sum() == round(0.6 * len(n))
        assert n[zero].max() <= n[~zero].min()  # the smallest rows went
    for t in tables:
        t.assign(rng.normal(size=t.shape))
    pruning.magnitude_prune(model, 0.5, per_table=False)
    total_zero = sum(np.all(t.numpy() == 0, axis=1).sum() for t in tables)
    assert total_zero == 75
    with pytest.raises(ValueError, match="target"):
        pruning.magnitude_prune(model, 1.5)


def test_gradual_pruning_reaches_final_sparsity():
    keras.utils.set_random_seed(0)
    ids = keras.Input((2,), dtype="int32")
    out = keras.layers.Dense(1)(keras.layers.Flatten()(keras.layers.Embedding(40, 4)(ids)))
    model = keras.Model(ids, out)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 40, size=(640, 2)).astype("int32")
    cb = pruning.GradualPruning(final_sparsity=0.75, begin_step=2, end_step=12, frequency=2)
    model.fit(x, rng.normal(size=(640,)).astype("float32"), batch_size=32, epochs=1, verbose=0,
              callbacks=[cb])
    table = model.layers[1].embeddings.numpy()
    assert np.all(table == 0, axis=1).sum() == 30  # 75% of 40 rows, kept zero after end_step
    assert pruning.polynomial_sparsity(7, 0.0, 0.75, 2, 12) == pytest.approx(0.75 * (1 - 0.5**3))


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="TensorFlow Serving's server binary is not installed here")
def test_tensorflow_model_server_serves_the_export(trained, tmp_path):
    import json
    import socket
    import time
    import urllib.request

    model, data = trained
    export.export_pruned(model, str(tmp_path / "base" / "1"))  # TF Serving wants versions
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["tensorflow_model_server", f"--rest_api_port={port}", "--port=0", "--model_name=ctr",
         f"--model_base_path={tmp_path / 'base'}"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        x = random_inputs(data, n=20, seed=3)
        body = json.dumps({"inputs": {"categorical": x[0].tolist(),
                                      "dense_features": x[1].tolist()}}).encode()
        for _ in range(120):
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/models/ctr:predict", data=body)
                with urllib.request.urlopen(request, timeout=5) as response:
                    outputs = json.loads(response.read())["outputs"]
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("tensorflow_model_server did not answer within 60 s")
        np.testing.assert_allclose(np.array(outputs, np.float32),
                                   model(x, training=False).numpy(), rtol=1e-6)
    finally:
        server.kill()
        server.wait()
