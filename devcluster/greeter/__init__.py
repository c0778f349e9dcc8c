"""The bundled Greeter server (``helloworld.Greeter/SayHello``) that the demo and the tests
run: ``python -m devcluster.greeter --port $PORT``. It ships inside devcluster so the demo
works from any directory; the repository's ``services/greeter`` runs the same server."""
