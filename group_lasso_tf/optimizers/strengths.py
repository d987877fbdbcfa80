"""Strengths and which variables get them: the part of a group optimizer that
maps each model variable to its l1, l21, l2.

A variable is regularized unless it is excluded (`unregularized`,
`exclude_from_regularization`), has rank < 2 (unless `regularize_vectors`),
or gets dense gradients (a `Dense` kernel) while `regularize_dense` is False
and no `per_variable` entry names it (docs/algorithm.md#which-variables-are-regularized).
A regularized variable's strengths are the first matching `per_variable`
entry over the optimizer's `l1`, `l21`, `l2`; each number is held by the
optimizer in float64 (the Keras 3 optimizers: all in one optimizer variable,
`PackedStrength`; the tf.keras ones: a variable each), so `set_strength` and
`sparsity.SparsityTarget` change it between steps without retracing.
"""

import math
import numbers
import re

import tensorflow as tf

def check_strength(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a non-negative float, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite float >= 0, got {value!r}")
    return float(value)


STRENGTH_NAMES = ("l1", "l21", "l2")


class PackedStrength:
    """One number-valued strength of one variable, held at `index` of a 1-D
    float64 optimizer variable (`table`) that holds them all: a step then
    reads one variable for every strength, not one per strength (each
    variable a `tf.function` step touches is one more of its captured
    inputs, about 1.6 us per call each on a 2-core machine;
    docs/benchmarks.md, issue 17). `set_strength` and `SparsityTarget` change it with
    `assign`, between steps and without retracing."""

    dtype = tf.float64
    shape = tf.TensorShape([])

    def __init__(self, table, index):
        self.table = table
        self.index = index

    def value(self):
        """The current value, a float64 scalar tensor."""
        return self.table.value[self.index]

    read_value = value

    def numpy(self):
        return self.value().numpy()

    def assign(self, value):
        """Sets the value (a float or scalar tensor)."""
        assign_strengths([self], [value])

    def __repr__(self):
        return f"<PackedStrength {self.table.path}[{self.index}]>"


def assign_strengths(holders, values):
    """Sets each strength holder (an optimizer variable or a
    `PackedStrength`) to its value: the packed ones with one write per
    strength table, not one per strength."""
    tables = {}
    for holder, value in zip(holders, values):
        if isinstance(holder, PackedStrength):
            indices, updates = tables.setdefault(id(holder.table), (holder.table, [], []))[1:]
            indices.append([holder.index])
            # dtype_hint: a Python float becomes a float64 tensor, not a
            # float32 one cast up (which would round it).
            updates.append(tf.cast(tf.convert_to_tensor(value, dtype_hint=tf.float64),
                                   tf.float64))
        else:
            holder.assign(value)
    for table, indices, updates in tables.values():
        table.assign(tf.tensor_scatter_nd_update(table.value, indices, tf.stack(updates)))


def _read(holder):
    """The value of a strength holder (an optimizer variable or a
    `PackedStrength`) as a tensor."""
    return holder.value() if isinstance(holder, PackedStrength) else tf.convert_to_tensor(holder)


def _is_held(strength):
    """Whether a strength spec is held by the optimizer (an optimizer
    variable or a `PackedStrength`; not a number or a schedule)."""
    return not (callable(strength) or isinstance(strength, numbers.Real))


def _strength_spec(name, value):
    """A strength as given: a float >= 0 (checked), or a callable of the step
    (a schedule or a function)."""
    if callable(value):
        return value
    return check_strength(name, value)


def _per_variable_entries(per_variable):
    """`per_variable` as a list of (pattern or variable, {strength name: spec})."""
    if per_variable is None:
        return []
    items = per_variable.items() if isinstance(per_variable, dict) else per_variable
    entries = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                "`per_variable` must be a dict {pattern: {strength: value}} or a list of "
                f"(pattern or variable, dict) pairs; got the entry {item!r}")
        key, overrides = item
        if isinstance(key, str):
            re.compile(key)
        elif not hasattr(key, "shape"):
            raise TypeError(f"`per_variable` keys must be regular expressions or variables, "
                            f"got {key!r}")
        if not isinstance(overrides, dict) or not overrides:
            raise TypeError(f"`per_variable[{key!r}]` must be a non-empty dict of strengths, "
                            f"got {overrides!r}")
        unknown = set(overrides) - set(STRENGTH_NAMES)
        if unknown:
            raise ValueError(f"`per_variable[{key!r}]` names {sorted(unknown)}; only "
                             f"{list(STRENGTH_NAMES)} can be set per variable")
        entries.append((key, {n: _strength_spec(f"per_variable[{key!r}][{n!r}]", v)
                              for n, v in overrides.items()}))
    return entries


class StrengthsMixin:
    """Variable selection and per-variable strengths of `GroupLassoMixin`.

    The host class provides `_var_key(variable)`, `iterations`, and
    `_new_strength_variable(variable, name, value)`; `_init_strengths` sets
    the state up.
    """

    def _init_strengths(self, l1, l21, l2, per_variable, unregularized, regularize_vectors,
                        regularize_dense):
        self.l1 = _strength_spec("l1", l1)
        self.l21 = _strength_spec("l21", l21)
        self.l2 = _strength_spec("l2", l2)
        self.per_variable = _per_variable_entries(per_variable)
        # var key -> {strength name: optimizer variable (numbers) or callable}
        self._strength_state = {}
        if isinstance(unregularized, str):
            unregularized = [unregularized]
        self.unregularized = list(unregularized or [])
        for pattern in self.unregularized:
            if not isinstance(pattern, str):
                raise TypeError(f"`unregularized` must hold strings, got {pattern!r}")
            re.compile(pattern)
        self.regularize_vectors = bool(regularize_vectors)
        self.regularize_dense = bool(regularize_dense)
        # var key -> True when its gradient is a dense tensor (seen in apply).
        self._dense_gradient = {}
        self._excluded_keys = set()
        self._regularized = {}

    # ------------------------------------------------------------ variables
    def exclude_from_regularization(self, var_list=None, var_names=None):
        """Give these variables the plain update (all strengths zero).

        Like `exclude_from_weight_decay`: call before the optimizer is built.

        Args:
            var_list: variables to exclude.
            var_names: strings; a variable whose path or name contains a match
                (`re.search`) is excluded.
        """
        if getattr(self, "built", False) or self._regularized:
            raise ValueError(
                "`exclude_from_regularization()` can only be called before the "
                "optimizer is built."
            )
        self._excluded_keys.update(self._var_key(v) for v in (var_list or []))
        self.unregularized.extend(var_names or [])

    def _regularizable(self, variable):
        """Regularized unless its gradients turn out dense (`_is_regularized`):
        what the strength variables are made for, the same before and after
        the first step (so that checkpoints hold the same variables)."""
        key = self._var_key(variable)
        if key not in self._regularized:
            self._regularized[key] = self._matches_regularization(variable, key)
        return self._regularized[key]

    def _is_regularized(self, variable):
        return self._regularizable(variable) and not (
            self._dense_gradient.get(self._var_key(variable), False) and not self.regularize_dense
            and len(variable.shape) >= 2 and self._per_variable_overrides(variable) is None)

    def _record_gradient_kinds(self, grads, variables):
        """Notes which variables get dense gradients (`regularize_dense`)."""
        for g, v in zip(grads, variables):
            if g is not None:
                self._dense_gradient[self._var_key(v)] = not isinstance(g, tf.IndexedSlices)

    def _matches_regularization(self, variable, key):
        if key in self._excluded_keys:
            return False
        names = [getattr(variable, "path", None), getattr(variable, "name", None)]
        for pattern in self.unregularized:
            if any(n is not None and re.search(pattern, n) for n in names):
                return False
        return len(variable.shape) >= 2 or self.regularize_vectors

    # ------------------------------------------------------------ strengths
    def _strength_specs(self, variable):
        """{name: spec} of a regularized variable: the first matching
        `per_variable` entry over the defaults."""
        specs = {"l1": self.l1, "l21": self.l21, "l2": self.l2}
        specs.update(self._per_variable_overrides(variable) or {})
        return specs

    def _per_variable_overrides(self, variable):
        """The first `per_variable` entry matching `variable`, or None."""
        names = [getattr(variable, "path", None), getattr(variable, "name", None)]
        key = self._var_key(variable)
        for pattern, overrides in self.per_variable:
            if isinstance(pattern, str):
                matched = any(n is not None and re.search(pattern, n) for n in names)
            else:
                matched = self._var_key(pattern) == key
            if matched:
                return overrides
        return None

    def _build_strengths(self, var_list):
        """An optimizer-held float64 number per number-valued strength of
        each regularized variable: what `set_strength` and
        `sparsity.SparsityTarget` change between steps. float64 so that the
        values set are kept exactly (bench/strength_overhead.py: holding them
        in the variable's own dtype instead, saving the cast, measured no
        faster). The host decides how they are held (`_hold_strengths`)."""
        numbers = []  # (variable, strength name, value) to hold
        for v in var_list:
            key = self._var_key(v)
            if key in self._strength_state or not self._regularizable(v):
                continue
            state = {}
            for name, spec in self._strength_specs(v).items():
                if callable(spec):
                    state[name] = spec
                else:
                    numbers.append((v, name, spec))
            self._strength_state[key] = state
        for (v, name, _), holder in zip(numbers, self._hold_strengths(numbers)):
            self._strength_state[self._var_key(v)][name] = holder

    def _hold_strengths(self, numbers):
        """Holders of the (variable, name, value) `numbers`, in order: here
        one optimizer variable (a float64 scalar) each."""
        return [self._new_strength_variable(v, name, value) for v, name, value in numbers]

    def _new_strength_variable(self, variable, name, value):
        raise NotImplementedError

    def _strengths(self, variable, dtype):
        return self._strengths_of([variable], dtype)[0]

    def _strengths_of(self, variables, dtype):
        """[l1, l21, l2] of each of `variables` as `dtype` scalars. The
        strengths held in (float64) optimizer variables are read, then cast
        together, one Cast op for all: a multi-table step reads three per
        table."""
        specs = []
        for v in variables:
            if not self._is_regularized(v):
                specs.append([0.0] * 3)
                continue
            state = self._strength_state.get(self._var_key(v))
            if state is None:  # not built for this variable: the specs as given
                state = self._strength_specs(v)
            specs.append([state[name] for name in STRENGTH_NAMES])
        held = [x for spec in specs for x in spec if _is_held(x)]
        if held and all(isinstance(x, PackedStrength) and x.table is held[0].table
                        for x in held):
            # One read of the optimizer's strength table for all of them.
            table = tf.cast(held[0].table.value, dtype)
            cast = iter(tf.unstack(tf.gather(table, [x.index for x in held]))
                        if len(held) > 1 else [table[held[0].index]])
        else:
            cast = iter(
                tf.unstack(tf.cast(tf.stack([_read(x) for x in held]), dtype))
                if len(held) > 1 else [tf.cast(_read(x), dtype) for x in held])
        return [[next(cast) if _is_held(x) else self._strength_tensor(x, dtype) for x in spec]
                for spec in specs]

    def _strength_tensor(self, value, dtype):
        """A strength given as a number or a schedule (callable of the step)
        as a `dtype` scalar; those held in variables are `_strengths_of`'s."""
        if isinstance(value, numbers.Real):
            return tf.constant(value, dtype)
        return tf.cast(value(self.iterations), dtype)

    def strength_variable(self, variable, name="l21"):
        """What holds strength `name` of `variable` (a float64 number that
        reads with `numpy()` and `value()` and changes with `assign(x)`: an
        optimizer variable, or for the Keras 3 optimizers a `PackedStrength`,
        an entry of their one strength variable), or None if `variable` is
        unregularized or that strength is a schedule."""
        if name not in STRENGTH_NAMES:
            raise ValueError(f"`name` must be one of {STRENGTH_NAMES}, got {name!r}")
        if not self._is_regularized(variable):
            return None
        value = self._strength_state.get(self._var_key(variable), {}).get(name)
        return None if value is None or callable(value) else value

    def get_strength(self, variable, name="l21"):
        """The current value (a float) of strength `name` of `variable`."""
        if name not in STRENGTH_NAMES:
            raise ValueError(f"`name` must be one of {STRENGTH_NAMES}, got {name!r}")
        return float(self._strengths(variable, tf.float64)[STRENGTH_NAMES.index(name)])

    def set_strength(self, name, value, variables=None):
        """Sets strength `name` to `value` (a float >= 0) for `variables`
        (default: every regularized variable); takes effect at the next step,
        without retracing. Raises if one of them holds a schedule."""
        if name not in STRENGTH_NAMES:
            raise ValueError(f"`name` must be one of {STRENGTH_NAMES}, got {name!r}")
        value = check_strength(name, value)
        if variables is None:
            holders = [state[name] for state in self._strength_state.values()]
            if not holders:
                raise ValueError("set_strength: the optimizer is not built yet "
                                 "(build it, or train one step, first)")
        else:
            holders = []
            for v in variables:
                state = self._strength_state.get(self._var_key(v))
                if state is None:
                    raise ValueError(f"set_strength: {getattr(v, 'path', v.name)!r} is not a "
                                     "regularized variable of this (built) optimizer")
                holders.append(state[name])
        if any(callable(h) for h in holders):
            raise ValueError(f"set_strength: `{name}` is a schedule or callable for some of "
                             "these variables; it cannot be set")
        assign_strengths(holders, [value] * len(holders))
