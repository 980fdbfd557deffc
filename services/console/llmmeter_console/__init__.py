"""The llmmeter web console: the product pages in a browser, a consumer of the gRPC API like any other."""
