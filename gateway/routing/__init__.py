"""Routing: which route serves a request (router), whether a route is healthy (breaker shared in
Redis, background probes), and the call with fallbacks within the deadline (dispatch). Steps 3 and 4
of the request path."""
