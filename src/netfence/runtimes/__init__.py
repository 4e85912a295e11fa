"""Runtimes place the workload and the fence and connect them.

A runtime knows nothing of Envoy or Squid syntax: it hands a backend a Placement and
runs what the backend's ProxySetup says.
"""

from netfence.runtimes.base import Runtime, WorkloadSpec, get_runtime, running, runtime_of

__all__ = ["Runtime", "WorkloadSpec", "get_runtime", "running", "runtime_of"]
