"""Redis plumbing: the client factory (plain or cluster), the pipelined script runner of the request
path, and the embedded redis-server of the default set-up. Nothing here knows teams or routes."""
