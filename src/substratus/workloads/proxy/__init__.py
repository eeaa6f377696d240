"""The autoscaling proxy in front of a Server's replicas (``python -m substratus.workloads.proxy``).

It forwards every request to the ready replica with the fewest in flight, holds requests while
none is ready (up to a queue limit and a timeout, then a 503 naming the reason), and reports its
load (``core.autoscale.LOAD_PATH``), from which the runtime decides how many replicas to run.
Locally the supervisor runs it as a process; on a cluster it is a Deployment of the helper image.
"""
