"""The kubernetes target: the same fence on a cluster, as manifests (it renders only).

    NAME-workload policy: egress to the fence only     NAME-fence policy: egress to the
    ┌──────────────────────────────┐                   internet (less every denied range)
    │ Pod / Deployment NAME        │ proxy, DNS        ┌─────────────────────────────────┐
    │  DNS: the fence (dnsPolicy   ├──────────────────►│ Deployment NAME-fence           │
    │  None), proxy variables      │ Service NAME-fence│  egress: Envoy | Squid egress   │
    │  naming the fence            │ (fixed cluster IP)│  ingress: Squid (Squid only)    │
    │                              │◄──────────────────┤  dns: dnsmasq                   │
    └──────────────────────────────┘ Service NAME      └──────────────▲──────────────────┘
                                     (HTTP transports)   Service NAME-ingress: clients

It plays the docker runtime's part on a cluster: the same backends (called with a
Placement whose listeners are on every address of the fence's pod), the same images, the
same argv; NetworkPolicies in place of the internal network. manifests.py assembles the
objects (and the form `podman kube play` runs); cluster.py, fence.py, workload.py and
netpol.py make them.
"""
