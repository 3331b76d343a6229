"""
The protocols chunkd speaks, each reduced to its grammar, calls into the
upload layer (L{chunkd.uploads}, L{chunkd.publish}) and its answers:

  - L{tus}: tus 1.0.0 with every extension;
  - L{facade}: the chunked-upload facade camera apps expect;
  - L{resumable}: Resumable.js's chunk protocol and flow.js's dialect;
  - L{tuswire}: the tus header grammar tus and the facade share.

Each protocol declares its endpoints once (L{chunkd.routes.Route}).
"""
