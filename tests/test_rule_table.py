"""The rule table of each language says the same (group_lasso_tf/rules.py,
cc/group_lasso/rules.h): the ops the library registers, the pybind11
module's description, the optimizers, tf_keras and the NumPy oracle."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

import group_lasso_tf as gl
import group_lasso_tf.tf_keras as gl_tfk
from group_lasso_tf import _core, ops, optimizers, rules

import np_reference

pytestmark = pytest.mark.skipif(not ops.fused_available(), reason="op library not built")


def test_core_module_describes_the_same_rules():
    assert tuple(_core.RULES) == tuple(rules.RULES)
    for name, rule in rules.RULES.items():
        assert tuple(_core.SLOT_NAMES[name]) == rule.slots, name
        assert tuple(_core.HYPER_NAMES[name]) == rule.hyper, name
        assert _core.FLAGS[name] == rule.flag, name
        assert (name in _core.HESSIAN_RULES) == rule.uses_hessian, name


def _expected_inputs(rule, sparse, stored):
    return (["var", *rule.slots] + (["hessian_estimate"] if stored else [])
            + ["lr", "l1", "l21", "l2", *rule.hyper, "grad"]
            + (["hessian"] if rule.uses_hessian else []) + (["estimate"] if stored else [])
            + (["indices"] if sparse else []))


@pytest.mark.parametrize("name", list(rules.RULES))
def test_registered_ops_have_the_table_inputs(name):
    rule = rules.RULES[name]
    variants = [False, True] if rule.uses_hessian else [False]
    for stored in variants:
        for sparse, op_name in zip([False, True], rule.op_names(stored)):
            op_def = op_def_registry.get(op_name)
            assert op_def is not None, f"{op_name} is not registered"
            assert [a.name for a in op_def.input_arg] == _expected_inputs(rule, sparse, stored)
            attrs = {a.name for a in op_def.attr}
            assert attrs == ({"T", "use_locking"} | ({"Tindices"} if sparse else set())
                             | ({rule.flag} if rule.flag else set())), op_name
            assert callable(ops.apply_op(op_name))
    if rule.multi_op_name is not None:
        # The multi-table op: lists of the same inputs, but the slots in one
        # stacked tensor of handles.
        op_def = op_def_registry.get(rule.multi_op_name)
        assert op_def is not None, f"{rule.multi_op_name} is not registered"
        per_table = {"var", "l1", "l21", "l2", "grad", "indices"}
        expected = _expected_inputs(rule, True, False)
        expected = ["var", "slots"] + expected[1 + len(rule.slots):]
        assert [a.name for a in op_def.input_arg] == expected
        assert all((a.number_attr == "N") == (a.name in per_table) for a in op_def.input_arg)
        attrs = {a.name for a in op_def.attr}
        assert attrs == ({"N", "T", "Tindices", "use_locking", "table_names"}
                         | ({rule.flag} if rule.flag else set()))
        assert callable(ops.apply_op(rule.multi_op_name))
    # No op of the library lies outside the table.
    table_ops = {n for r in rules.RULES.values() for s in (False, True) for n in r.op_names(s)}
    table_ops |= {r.multi_op_name for r in rules.RULES.values() if r.multi_op_name}
    library_ops = {n for n in dir(ops.fused_ops()) if n.startswith("Resource")}
    assert library_ops <= table_ops


def test_every_rule_has_an_optimizer_and_tf_keras_twin():
    classes = [getattr(optimizers, n) for n in optimizers.__all__]
    by_rule = {c._rule.name: c for c in classes if c._rule is not None}
    assert set(by_rule) == set(rules.RULES)
    for name, cls in by_rule.items():
        assert getattr(gl, cls.__name__) is cls
        if not rules.RULES[name].uses_hessian:
            assert getattr(gl_tfk, cls.__name__)._rule is cls._rule
            assert getattr(gl_tfk.legacy, cls.__name__)._rule is cls._rule


@pytest.mark.parametrize("name", list(rules.RULES))
def test_optimizer_slots_and_hyper_follow_the_table(name):
    cls = next(getattr(optimizers, n) for n in optimizers.__all__
               if getattr(getattr(optimizers, n), "_rule", None) is rules.RULES[name])
    opt = cls(learning_rate=0.01)
    variable = tf.Variable(tf.zeros([3, 2]))
    opt.build([variable])
    assert opt._group_slot_names == rules.RULES[name].slots
    for slot in rules.RULES[name].slots:
        assert opt.get_slot(variable, slot).shape == variable.shape
    assert len(opt._rule_hyper(tf.float32)) == len(rules.RULES[name].hyper)
    assert tuple(np_reference.SLOTS[name]) == rules.RULES[name].slots


def test_adam_amsgrad_spellings_share_one_rule():
    for opt in (gl.GroupAdam(amsgrad=True), gl.GroupAMSGrad(),
                gl_tfk.GroupAdam(amsgrad=True), gl_tfk.legacy.GroupAdam(amsgrad=True)):
        assert opt._rule is rules.AMSGRAD
    assert gl.GroupAdam()._rule is rules.ADAM
    assert gl.GroupAdam.from_config(gl.GroupAdam(amsgrad=True).get_config())._rule is rules.AMSGRAD


def test_unknown_rule_is_a_clear_error():
    with pytest.raises(ValueError, match="rule must be one of"):
        _core.apply_dense("adamw", np.zeros((2, 2)), [np.zeros((2, 2))] * 3, np.zeros((2, 2)),
                          0.1, 0, 0, 0, [0.5] * 5)
    with pytest.raises(ValueError, match="`rule` must be one of"):
        rules.get("adamw")
