"""Clusters, their endpoints and load balancing, and the connection pools to upstreams.

`ClusterManager` (manager.py) owns every cluster by name; the router and tcp_proxy ask it for a
cluster and open streams or connections through it. Config translation (config.py) and load
balancing (lb.py) are pure; pools (http1_pool.py, http2_pool.py) do the I/O.
"""
