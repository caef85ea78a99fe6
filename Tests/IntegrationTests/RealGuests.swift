import Testing

/// Every test that boots real guests, run one at a time: TCG guests on a 2-core machine starve
/// each other when many boot at once, and the tests measure time (tools, counters, migrations,
/// CPU load for DRS). The whole-day PlanetLab simulations run here too, so their CPU never
/// competes with a guest's.
@Suite(.serialized) enum RealGuests {}
