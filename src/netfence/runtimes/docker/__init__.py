"""The docker runtime: the workload and its fence as containers, through the Docker Engine
API that Docker and Podman both serve (runtime.py; images.py, networks.py, containers.py)."""
