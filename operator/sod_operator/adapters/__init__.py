"""The only operator code that talks to the Kubernetes API: client, controller runtime,
leader election, Events and metrics."""
