"""The Kubernetes runtime: an operator that runs the four kinds on a cluster.

It observes each object's world through the API server, asks the same ``core.decide`` as the
local supervisor, and carries out the actions with child objects (a Job per Model or Dataset
run). The only place, with the CLI's cluster client, that talks to Kubernetes.
"""
