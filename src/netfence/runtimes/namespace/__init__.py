"""The namespace runtime: Linux namespaces and bubblewrap, no container engine
(runtime.py; sandbox.py starts the workload, relay.py and processes.py serve the fence)."""
