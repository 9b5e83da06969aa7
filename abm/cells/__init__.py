"""Cell types: one module per type, each declaring its column schema and its vectorised rules."""
