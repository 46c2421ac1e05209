"""The daemon room: configuration and the service that runs every other room."""
