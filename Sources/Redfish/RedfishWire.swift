import Foundation

/// The few Redfish (DMTF DSP0266) resources a hypervisor manager needs from a BMC: the service
/// root, the systems collection, a ComputerSystem's power state and its Reset action. Shared by
/// the client (`RedfishClient`) and Shepherd's own BMC emulator, so both speak the same JSON.
public enum RedfishWire {
    public static let serviceRoot = "/redfish/v1/"

    /// `{"@odata.id": "/redfish/v1/Systems/1"}`
    public struct Link: Codable, Sendable, Equatable {
        public var id: String
        public init(_ id: String) { self.id = id }
        enum CodingKeys: String, CodingKey { case id = "@odata.id" }
    }

    public struct ServiceRoot: Codable, Sendable {
        public var odataID: String
        public var id: String
        public var name: String
        public var redfishVersion: String
        public var systems: Link?
        public init(systems: Link, name: String) {
            odataID = RedfishWire.serviceRoot; id = "RootService"; self.name = name; redfishVersion = "1.6.0"; self.systems = systems
        }
        enum CodingKeys: String, CodingKey {
            case odataID = "@odata.id", id = "Id", name = "Name", redfishVersion = "RedfishVersion", systems = "Systems"
        }
    }

    public struct Collection: Codable, Sendable {
        public var odataID: String
        public var name: String
        public var members: [Link]
        public var count: Int
        public init(odataID: String, name: String, members: [Link]) {
            self.odataID = odataID; self.name = name; self.members = members; count = members.count
        }
        enum CodingKeys: String, CodingKey {
            case odataID = "@odata.id", name = "Name", members = "Members", count = "Members@odata.count"
        }
    }

    /// Redfish PowerState values.
    public enum PowerState: String, Codable, Sendable {
        case on = "On", off = "Off", poweringOn = "PoweringOn", poweringOff = "PoweringOff", paused = "Paused"
    }

    /// Redfish ResetType values (the ones BMCs commonly implement).
    public enum ResetType: String, Codable, Sendable, CaseIterable {
        case on = "On", forceOff = "ForceOff", gracefulShutdown = "GracefulShutdown", gracefulRestart = "GracefulRestart",
             forceRestart = "ForceRestart", powerCycle = "PowerCycle", nmi = "Nmi", forceOn = "ForceOn", pushPowerButton = "PushPowerButton"
    }

    public struct ResetAction: Codable, Sendable {
        public var target: String
        public var allowableValues: [ResetType]?
        public init(target: String, allowableValues: [ResetType]?) { self.target = target; self.allowableValues = allowableValues }
        enum CodingKeys: String, CodingKey { case target, allowableValues = "ResetType@Redfish.AllowableValues" }

        /// Unknown reset types a real BMC lists are skipped, not fatal.
        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            target = try container.decode(String.self, forKey: .target)
            allowableValues = try container.decodeIfPresent([String].self, forKey: .allowableValues)?.compactMap(ResetType.init(rawValue:))
        }
    }

    public struct SystemActions: Codable, Sendable {
        public var reset: ResetAction?
        public init(reset: ResetAction?) { self.reset = reset }
        enum CodingKeys: String, CodingKey { case reset = "#ComputerSystem.Reset" }
    }

    public struct ComputerSystem: Codable, Sendable {
        public var odataID: String
        public var id: String
        public var name: String?
        /// Optional in the schema; a BMC that omits it is treated as not knowing.
        public var powerState: PowerState?
        public var actions: SystemActions?
        public init(odataID: String, id: String, name: String?, powerState: PowerState?, actions: SystemActions?) {
            self.odataID = odataID; self.id = id; self.name = name; self.powerState = powerState; self.actions = actions
        }
        enum CodingKeys: String, CodingKey {
            case odataID = "@odata.id", id = "Id", name = "Name", powerState = "PowerState", actions = "Actions"
        }
    }

    public struct ResetRequest: Codable, Sendable {
        public var resetType: ResetType
        public init(_ resetType: ResetType) { self.resetType = resetType }
        enum CodingKeys: String, CodingKey { case resetType = "ResetType" }
    }

    /// Redfish's error body: `{"error": {"code": …, "message": …}}`.
    public struct ErrorBody: Codable, Sendable {
        public struct Inner: Codable, Sendable {
            public var code: String?
            public var message: String?
        }
        public var error: Inner
        public init(code: String, message: String) { error = Inner(code: code, message: message) }
    }
}
