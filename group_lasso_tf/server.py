"""A tf.distribute server task that has the fused ops loaded.

Parameter-server and worker processes of a ParameterServerStrategy job run
the optimizers' ops (updates run where the variables live, on the parameter
servers), so they must load the op library before serving:

    python -m group_lasso_tf.server --job_name ps --task_index 0 \\
        --cluster '{"chief": ["host:2222"], "worker": ["host:2223"], "ps": ["host:2224"]}'

Without --cluster the cluster and task come from TF_CONFIG, as for any
TensorFlow task. The process serves until it is killed.
"""

import argparse
import json
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job_name", help="ps or worker (default: TF_CONFIG's task type)")
    parser.add_argument("--task_index", type=int, help="default: TF_CONFIG's task index")
    parser.add_argument("--cluster", help="cluster spec as JSON (default: TF_CONFIG's cluster)")
    parser.add_argument("--allow_fallback", action="store_true",
                        help="serve even if the op library cannot be loaded")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    cluster = json.loads(args.cluster) if args.cluster else tf_config.get("cluster")
    job_name = args.job_name or tf_config.get("task", {}).get("type")
    task_index = args.task_index if args.task_index is not None else \
        tf_config.get("task", {}).get("index")
    if not cluster or job_name is None or task_index is None:
        sys.exit("group_lasso_tf.server: give --cluster, --job_name and --task_index, "
                 "or set TF_CONFIG")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from group_lasso_tf import ops

    if not ops.fused_available() and not args.allow_fallback:
        sys.exit(f"group_lasso_tf.server: the op library is not usable ({ops.unavailable_reason()}); "
                 "the cluster's updates would fail on this task. Rebuild, or pass --allow_fallback "
                 "if every process of the job runs without it.")
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job_name,
                                  task_index=task_index, protocol="grpc", start=True)
    print(f"group_lasso_tf.server: {job_name}:{task_index} serving at {server.target}, "
          f"fused ops: {ops.fused_available()}", flush=True)
    server.join()


if __name__ == "__main__":
    main()
