"""The namespace runtime: Linux namespaces and bubblewrap, no container engine."""

from netfence.runtimes.namespace.runtime import NamespaceRuntime

__all__ = ["NamespaceRuntime"]
