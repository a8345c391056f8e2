"""HTTP handlers, one module per resource; the route table is idlakd.web.routes."""
