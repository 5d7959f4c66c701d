"""The Atelier server: HTTP API and web console (`atelier serve`); see server.app."""
