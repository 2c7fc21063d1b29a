"""One HTTP listener per service; its routes come by RDS, from sovereign too (REST)."""

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
REST = {
    "api_config_source": {
        "api_type": "REST",
        "transport_api_version": "V3",
        "cluster_names": ["sovereign"],
        "refresh_delay": "1s",
    },
    "resource_api_version": "V3",
}


def call(instances, discovery_request, **kwargs):
    for service in instances:
        hcm = {
            "@type": HCM,
            "stat_prefix": service["name"],
            "rds": {"route_config_name": service["name"] + "-routes", "config_source": REST},
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        }
        yield {
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": service["name"],
            "address": {
                "socket_address": {"address": "127.0.0.1", "port_value": service["listen_port"]}
            },
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ]
                }
            ],
        }
