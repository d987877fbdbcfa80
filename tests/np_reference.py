"""float64 NumPy reference of docs/algorithm.md, written from the equations alone.

Independent of the package's code: one step of each optimizer on a whole
variable (dense) or on the rows named by ids (lazy sparse, duplicates
summed), on plain dicts of NumPy arrays. Rows are slices along axis 0.
"""

import numpy as np

SLOTS = {
    "adam": ("m", "v", "linear"),
    "amsgrad": ("m", "v", "vhat", "linear"),
    "adahessian": ("m", "v", "linear"),
    "adagrad": ("accumulator", "linear"),
    "momentum": ("m", "linear"),
    "ftrl": ("accumulator", "linear"),
    "rmsprop": ("m", "v", "average_gradient", "linear"),
}


def _moments(rule, g, x, state, lr, hp, t, hess=None):
    """Per-element moment rule: returns new moments, a, p_old, p_new.

    `hess` is AdaHessian's Hessian-diagonal estimate D (other rules ignore it).
    """
    new = {}
    if rule == "adahessian":
        b1, b2, eps, k = hp["beta_1"], hp["beta_2"], hp["epsilon"], hp["hessian_power"]
        new["m"] = b1 * state["m"] + (1 - b1) * g
        new["v"] = b2 * state["v"] + (1 - b2) * hess * hess
        a = lr * (1 - b2**t) ** (k / 2) / (1 - b1**t) * new["m"]
        p_old, p_new = state["v"] ** (k / 2) + eps, new["v"] ** (k / 2) + eps
    elif rule in ("adam", "amsgrad"):
        b1, b2, eps = hp["beta_1"], hp["beta_2"], hp["epsilon"]
        m, v = state["m"], state["v"]
        new["m"] = b1 * m + (1 - b1) * g
        new["v"] = b2 * v + (1 - b2) * g * g
        a = lr * np.sqrt(1 - b2**t) / (1 - b1**t) * new["m"]
        if rule == "adam":
            p_old, p_new = np.sqrt(v) + eps, np.sqrt(new["v"]) + eps
        else:
            new["vhat"] = np.maximum(state["vhat"], new["v"])
            p_old, p_new = np.sqrt(state["vhat"]) + eps, np.sqrt(new["vhat"]) + eps
    elif rule == "adagrad":
        eps = hp["epsilon"]
        new["accumulator"] = state["accumulator"] + g * g
        a = lr * g
        p_old, p_new = np.sqrt(state["accumulator"] + eps), np.sqrt(new["accumulator"] + eps)
    elif rule == "momentum":
        mu = hp["momentum"]
        new["m"] = mu * state["m"] - lr * g
        a = -(mu * new["m"] - lr * g) if hp.get("nesterov") else -new["m"]
        p_old = p_new = np.ones_like(g)
    elif rule == "rmsprop":
        rho, mu, eps, centered = hp["rho"], hp["momentum"], hp["epsilon"], hp["centered"]

        def precond(v, mg):
            return np.sqrt(v - mg * mg + eps) if centered else np.sqrt(v + eps)

        new["v"] = rho * state["v"] + (1 - rho) * g * g
        new["average_gradient"] = (rho * state["average_gradient"] + (1 - rho) * g if centered
                                   else state["average_gradient"])
        p_old = precond(state["v"], state["average_gradient"])
        p_new = precond(new["v"], new["average_gradient"])
        if mu > 0:  # x' = x - m', m' = mu m + lr g / p_new
            new["m"] = mu * state["m"] + lr * g / p_new
            a = p_new * new["m"]
        else:  # x' = x - lr g / p_new
            new["m"] = state["m"]
            a = lr * g
    elif rule == "ftrl":
        k = -hp["learning_rate_power"]
        new["accumulator"] = state["accumulator"] + g * g
        a = g + 2 * hp["l2_shrinkage"] * x
        p_old, p_new = state["accumulator"] ** k / lr, new["accumulator"] ** k / lr
    else:
        raise ValueError(rule)
    return new, a, p_old, p_new


def row_step(rule, x, state, g, lr, l1, l21, l2, hp, t, hess=None):
    """One step on a single row (1-D arrays). Returns (x', state')."""
    d = x.size
    lin = state["linear"]
    new, a, p_old, p_new = _moments(rule, g, x, state, lr, hp, t, hess)
    if rule == "ftrl":
        t1, t21, t2 = l1, l21 * np.sqrt(d), 2 * (l2 + hp["beta"] / (2 * lr))
    else:
        if np.all(lin == 0):  # a row never updated
            p_old = np.zeros_like(p_old)
        t1, t21, t2 = lr * l1, lr * l21 * np.sqrt(d), 2 * lr * l2
    lin = lin + a - (p_new - p_old) * x
    s = np.clip(lin, -t1, t1) - lin
    norm = np.linalg.norm(s)
    if t21 > 0 and norm <= t21:
        x_new = np.zeros_like(x)
    elif t21 > 0:
        x_new = s * (1 - t21 / norm) / (p_new + t2)
    else:
        x_new = s / (p_new + t2)
    new["linear"] = lin
    return x_new, new


def _rows(a):
    return a.reshape(a.shape[0] if a.ndim else 1, -1)


def dense_step(rule, var, state, grad, lr, l1, l21, l2, hp, t, hess=None):
    """Returns (var', state') for a dense gradient; inputs are not modified."""
    var = np.array(var, np.float64)
    state = {k: np.array(v, np.float64) for k, v in state.items()}
    xs, gs = _rows(var), _rows(np.asarray(grad, np.float64))
    hs = None if hess is None else _rows(np.asarray(hess, np.float64))
    ss = {k: _rows(v) for k, v in state.items()}
    for r in range(xs.shape[0]):
        x_new, new = row_step(rule, xs[r].copy(), {k: v[r].copy() for k, v in ss.items()},
                              gs[r], lr, l1, l21, l2, hp, t, None if hs is None else hs[r])
        xs[r] = x_new
        for k in ss:
            ss[k][r] = new[k]
    return var, state


def sparse_step(rule, var, state, grad, ids, lr, l1, l21, l2, hp, t, hess=None):
    """Lazy step on the rows named by ids (duplicates summed, D's too)."""
    var = np.array(var, np.float64)
    state = {k: np.array(v, np.float64) for k, v in state.items()}
    width = int(np.prod(var.shape[1:]))
    grad = np.asarray(grad, np.float64).reshape(len(ids), width)
    if hess is not None:
        hess = np.asarray(hess, np.float64).reshape(len(ids), width)
    xs = _rows(var)
    ss = {k: _rows(v) for k, v in state.items()}
    for row in np.unique(ids):
        at = np.asarray(ids) == row
        h = None if hess is None else hess[at].sum(axis=0)
        x_new, new = row_step(rule, xs[row].copy(), {k: v[row].copy() for k, v in ss.items()},
                              grad[at].sum(axis=0), lr, l1, l21, l2, hp, t, h)
        xs[row] = x_new
        for k in ss:
            ss[k][row] = new[k]
    return var, state


def initial_state(rule, shape, hp):
    """Slots at their starting values."""
    state = {k: np.zeros(shape) for k in SLOTS[rule]}
    if rule in ("adagrad", "ftrl"):
        state["accumulator"] = np.full(shape, hp["initial_accumulator_value"], np.float64)
    return state


# Hyperparameters exactly representable in float32, so that float32 and
# float64 runs see the same values.
BASE_HP = {
    "adam": {"beta_1": 0.875, "beta_2": 0.9990234375, "epsilon": 2.0**-20},
    "amsgrad": {"beta_1": 0.875, "beta_2": 0.9990234375, "epsilon": 2.0**-20},
    "adahessian": {"beta_1": 0.875, "beta_2": 0.9990234375, "epsilon": 2.0**-20,
                   "hessian_power": 1.0},
    "adagrad": {"epsilon": 2.0**-20, "initial_accumulator_value": 0.125},
    "momentum": {"momentum": 0.875, "nesterov": False},
    "ftrl": {"learning_rate_power": -0.5, "l2_shrinkage": 0.0, "beta": 0.0,
             "initial_accumulator_value": 0.125},
    "rmsprop": {"rho": 0.875, "momentum": 0.875, "epsilon": 2.0**-20, "centered": True},
}


def hyper_list(rule, hp, t):
    """The rule's op inputs after lr, l1, l21, l2, in op order."""
    if rule in ("adam", "amsgrad", "adahessian"):
        adam = [hp["beta_1"] ** t, hp["beta_2"] ** t, hp["beta_1"], hp["beta_2"], hp["epsilon"]]
        return adam + [hp["hessian_power"]] if rule == "adahessian" else adam
    if rule == "adagrad":
        return [hp["epsilon"]]
    if rule == "momentum":
        return [hp["momentum"]]
    if rule == "rmsprop":
        return [hp["rho"], hp["momentum"], hp["epsilon"]]
    return [hp["l2_shrinkage"], hp["beta"], hp["learning_rate_power"]]
