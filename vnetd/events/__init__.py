"""The event stream: numbering, CloudEvents encoding and publishing to `vnetd.events`."""
