// swift-tools-version: 6.0
import PackageDescription

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let package = Package(
    name: "shepherd",
    platforms: [.macOS(.v14)],
    products: [.executable(name: "shepherd", targets: ["shepherd"])],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-openapi-generator", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-openapi-runtime", from: "1.7.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.5.0"),
        .package(url: "https://github.com/hummingbird-project/swift-openapi-hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.23.0"),
        .package(url: "https://github.com/swift-server/swift-openapi-async-http-client", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.70.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.27.0"),
    ],
    targets: [
        // Pure domain: types, lifecycles, validation. Foundation only, no I/O.
        .target(name: "ShepherdCore", swiftSettings: strict),
        // Pure algorithms over a cluster snapshot.
        .target(name: "Scheduling", dependencies: ["ShepherdCore"], swiftSettings: strict),
        // Trace-driven data-centre simulator (PlanetLab, CloudSim-compatible) over Scheduling.
        // Exclusivity checks on its hot arrays cost half the run time; it is single-threaded.
        .target(
            name: "Simulation", dependencies: ["Scheduling"],
            swiftSettings: strict + [.unsafeFlags(["-enforce-exclusivity=unchecked"])]),
        // Leaves: no domain imports.
        .target(name: "HostKit", exclude: ["README.md"], swiftSettings: strict),
        .target(name: "QMP", exclude: ["README.md"], swiftSettings: strict),
        .target(name: "QemuImg", dependencies: ["HostKit"], exclude: ["README.md"], swiftSettings: strict),
        .target(
            name: "Hypervisor",
            dependencies: ["ShepherdCore", "QMP", "QemuImg", "HostKit"],
            swiftSettings: strict),
        // Generated from docs/api/openapi.yaml: types, server stubs and client.
        .target(
            name: "ShepherdAPI",
            dependencies: [
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIAsyncHTTPClient", package: "swift-openapi-async-http-client"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            plugins: [.plugin(name: "OpenAPIGenerator", package: "swift-openapi-generator")]),
        // What the manager's and the agent's HTTP servers share: error mapping and bearer auth.
        .target(
            name: "ServerKit",
            dependencies: [
                "ShepherdCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict),
        // Redfish: wire types and a client for hosts' BMCs (power state, reset).
        .target(
            name: "Redfish",
            dependencies: [
                "ShepherdCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strict),
        // A Redfish BMC for a demo or test host: power-off ends every process of that host.
        .target(
            name: "BMC",
            dependencies: [
                "Redfish", "HostKit", "ShepherdCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(
            name: "Agent",
            dependencies: [
                "ShepherdCore", "Hypervisor", "HostKit", "ShepherdAPI", "ServerKit",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIAsyncHTTPClient", package: "swift-openapi-async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(
            name: "Manager",
            dependencies: [
                "ShepherdCore", "Scheduling", "ShepherdAPI", "ServerKit", "HostKit", "Redfish",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "OpenAPIHummingbird", package: "swift-openapi-hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "shepherd",
            dependencies: [
                "ShepherdCore", "Agent", "Manager", "HostKit", "ShepherdAPI", "ServerKit", "Simulation", "BMC",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "OpenAPIAsyncHTTPClient", package: "swift-openapi-async-http-client"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: strict),
        // Starts real managers and agents (the built `shepherd` binary) for tests, and cleans up.
        .target(
            name: "TestSupport",
            dependencies: [
                "ShepherdAPI", "HostKit", "ShepherdCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            path: "Tests/TestSupport"),
        .testTarget(name: "ShepherdCoreTests", dependencies: ["ShepherdCore"]),
        .testTarget(name: "SchedulingTests", dependencies: ["Scheduling"]),
        .testTarget(name: "SimulationTests", dependencies: ["Simulation"]),
        .testTarget(
            name: "RedfishTests",
            dependencies: [
                "Redfish", "BMC", "HostKit", "ShepherdCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
        .testTarget(name: "ManagerTests", dependencies: ["TestSupport", "Manager", "ServerKit"]),
        // The randomized HA fault campaign: `make faults`, not part of `make test`.
        .testTarget(name: "FaultCampaign", dependencies: ["TestSupport", "HostKit", "ShepherdAPI", "Redfish"]),
        .testTarget(name: "Benchmarks", dependencies: ["TestSupport", "HostKit", "ShepherdAPI"]),
        .testTarget(name: "IntegrationTests", dependencies: ["TestSupport", "QMP", "HostKit", "ShepherdAPI", "Simulation"]),
    ]
)
