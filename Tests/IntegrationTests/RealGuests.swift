import Testing

/// Every test that boots real guests, run one at a time: TCG guests on a 2-core machine starve
/// each other when many boot at once, and the tests measure time (tools, counters, migrations).
@Suite(.serialized) enum RealGuests {}
