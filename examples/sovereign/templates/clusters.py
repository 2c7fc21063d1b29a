"""One static cluster per service, with its backend's address."""


def call(instances, discovery_request, **kwargs):
    for service in instances:
        address = {"address": service["backend_host"], "port_value": service["backend_port"]}
        yield {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": service["name"],
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": service["name"],
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"socket_address": address}}}]}
                ],
            },
        }
