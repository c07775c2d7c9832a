"""Herald's HTTP API (FastAPI): thin routers over the domain in herald/ and models/."""
