"""HTTP handlers, one module per resource; the route table is idlakd.routes."""
