"""Every request of a service's listener goes to the service's cluster."""


def call(instances, discovery_request, **kwargs):
    for service in instances:
        yield {
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": service["name"] + "-routes",
            "virtual_hosts": [
                {
                    "name": service["name"],
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": service["name"]}}],
                }
            ],
        }
