import Foundation
import GRDB
import ShepherdAPI
import ShepherdCore

/// The bearer token of the request being handled, set by the auth middleware for the
/// agent endpoints, which check it themselves.
enum RequestBearer {
    @TaskLocal static var token: String?
}

/// The OpenAPI handlers: decode → call a service → encode. Nothing else lives here.
struct API: APIProtocol {
    let store: Store
    let vms: VMService
    let hosts: HostService
    let migrations: MigrationService
    let maintenance: MaintenanceService
    let drs: DRSService
    let ha: HAService
    let power: PowerService
    let snapshots: SnapshotService
    let storage: StorageMigrationService
    let datastores: DatastoreService
    let qos: QoSService
    let balloons: BalloonService
    let network: NetworkService
    let tasks: TaskEngine
    let version: String

    typealias Schemas = Components.Schemas

    func healthz(_ input: Operations.Healthz.Input) async throws -> Operations.Healthz.Output {
        .ok(.init(body: .json(.init(status: "ok", version: version))))
    }

    // MARK: clusters, hosts, datastores, templates

    func listClusters(_ input: Operations.ListClusters.Input) async throws -> Operations.ListClusters.Output {
        let rows = try await guarded {
            try await store.db.read { db in
                try ClusterRecord.order(Column("name")).fetchAll(db).map { cluster in
                    (cluster,
                     try HostRecord.filter(Column("clusterId") == cluster.id).fetchCount(db),
                     try Self.vmCount(db, cluster: cluster.id))
                }
            }
        }
        return .ok(.init(body: .json(rows.map { cluster, hostCount, vmCount in Self.cluster(cluster, hostCount: hostCount, vmCount: vmCount) })))
    }

    static func vmCount(_ db: Database, cluster: String) throws -> Int {
        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM vm JOIN host ON host.id = vm.hostId WHERE host.clusterId = ?", arguments: [cluster]) ?? 0
    }

    static func cluster(_ cluster: ClusterRecord, hostCount: Int, vmCount: Int, notes: [String]? = nil) -> Schemas.Cluster {
        Schemas.Cluster(id: cluster.id, name: cluster.name, hostCount: hostCount, vmCount: vmCount,
                        memoryOvercommit: cluster.memoryOvercommit, overcommitRatioPercent: cluster.overcommitRatioPercent, notes: notes,
                        createdAt: cluster.createdAt, imcBaseline: cluster.imcBaseline,
                        migrationTimeoutSeconds: cluster.migrationTimeoutSeconds, maxConcurrentMigrations: cluster.maxConcurrentMigrations,
                        drs: drsConfig(cluster),
                        ha: Schemas.HAConfig(enabled: cluster.haEnabled, admission: cluster.haAdmission,
                                             isolationResponse: Schemas.IsolationResponse(rawValue: cluster.haIsolationResponse) ?? .leaveRunning))
    }

    static func drsConfig(_ cluster: ClusterRecord) -> Schemas.DRSConfig {
        Schemas.DRSConfig(mode: Schemas.DRSMode(rawValue: cluster.drsMode) ?? .off, threshold: cluster.drsThreshold,
                          baselineCPUPercent: Int((cluster.drsBaselineCPU * 100).rounded()),
                          baselineMemoryPercent: Int((cluster.drsBaselineMemory * 100).rounded()),
                          metric: Schemas.DRSMetric(rawValue: cluster.drsMetric) ?? .both, intervalSeconds: cluster.drsIntervalSeconds,
                          dpm: Schemas.DRSMode(rawValue: cluster.dpmMode) ?? .off)
    }

    func updateCluster(_ input: Operations.UpdateCluster.Input) async throws -> Operations.UpdateCluster.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        if let baseline = body.imcBaseline, baseline != "off" { try CPUModels.validate(baseline, field: "imcBaseline") }
        if let timeout = body.migrationTimeoutSeconds, !(10...86_400).contains(timeout) {
            throw ShepherdError.invalidField("migrationTimeoutSeconds", "\(timeout) is outside 10–86400")
        }
        if let limit = body.maxConcurrentMigrations, !(1...16).contains(limit) {
            throw ShepherdError.invalidField("maxConcurrentMigrations", "\(limit) is outside 1–16")
        }
        let reference = input.path.cluster
        let (cluster, hostCount, vmCount, notes) = try await guarded {
            try await store.db.write { [qos] db -> (ClusterRecord, Int, Int, [String]) in
                guard var cluster = try ClusterRecord.filter(Column("name") == reference).fetchOne(db) ?? ClusterRecord.fetchOne(db, key: reference) else {
                    throw ShepherdError.notFound("cluster", reference)
                }
                let hosts = try HostRecord.filter(Column("clusterId") == cluster.id).fetchAll(db)
                if let baseline = body.imcBaseline {
                    if baseline == "off" { cluster.imcBaseline = nil } else {
                        let below = hosts.filter { !CPUModels.host(providing: $0.providedCPUModel, vendor: $0.cpuVendor, canRun: baseline) }
                        guard below.isEmpty else {
                            throw ShepherdError(.preflightFailed, "imcBaseline: \(baseline) is above what " + below.map { "'\($0.name)' (\($0.providedCPUModel ?? $0.cpuVendor))" }.joined(separator: ", ") + " provides")
                        }
                        cluster.imcBaseline = baseline
                    }
                }
                if let drs = body.drs {
                    try DRSService.update(&cluster, mode: drs.mode?.rawValue, threshold: drs.threshold,
                                          baselineCPUPercent: drs.baselineCPUPercent, baselineMemoryPercent: drs.baselineMemoryPercent,
                                          metric: drs.metric?.rawValue, intervalSeconds: drs.intervalSeconds, dpm: drs.dpm?.rawValue)
                }
                if let ha = body.ha {
                    if let admission = ha.admission {
                        _ = try HAService.admissionPolicy(admission, hosts: hosts)
                        cluster.haAdmission = admission
                    }
                    if let enabled = ha.enabled { cluster.haEnabled = enabled }
                    if let response = ha.isolationResponse { cluster.haIsolationResponse = response.rawValue }
                }
                if let timeout = body.migrationTimeoutSeconds { cluster.migrationTimeoutSeconds = timeout }
                if let limit = body.maxConcurrentMigrations { cluster.maxConcurrentMigrations = limit }
                var notes: [String] = []
                if body.memoryOvercommit != nil || body.overcommitRatioPercent != nil {
                    notes = try QoSService.update(db, &cluster, overcommit: body.memoryOvercommit, ratioPercent: body.overcommitRatioPercent,
                                                  hostReserveMiB: qos.hostReserveMiB)
                }
                try cluster.update(db)
                let vmCount = try Self.vmCount(db, cluster: cluster.id)
                return (cluster, hosts.count, vmCount, notes)
            }
        }
        return .ok(.init(body: .json(Self.cluster(cluster, hostCount: hostCount, vmCount: vmCount, notes: notes.isEmpty ? nil : notes))))
    }

    func createCluster(_ input: Operations.CreateCluster.Input) async throws -> Operations.CreateCluster.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        try Validate.name(body.name)
        let cluster = ClusterRecord(id: newID(), name: body.name, memoryOvercommit: false, createdAt: Date())
        try await guarded {
            try await store.db.write { db in
                if try ClusterRecord.filter(Column("name") == body.name).fetchCount(db) > 0 {
                    throw ShepherdError(.alreadyExists, "name: a cluster named '\(body.name)' already exists")
                }
                try cluster.insert(db)
            }
        }
        return .created(.init(body: .json(Self.cluster(cluster, hostCount: 0, vmCount: 0))))
    }

    // MARK: DRS and rules

    func listDRSRecommendations(_ input: Operations.ListDRSRecommendations.Input) async throws -> Operations.ListDRSRecommendations.Output {
        let views = try await guarded {
            let cluster = try await store.db.read { db in try Inventory.cluster(db, input.path.cluster) }
            if input.query.evaluate == false { return try await drs.recommendations(cluster) }
            return try await drs.run(cluster)
        }
        return .ok(.init(body: .json(views.map(Self.recommendation))))
    }

    func applyDRSRecommendations(_ input: Operations.ApplyDRSRecommendations.Input) async throws -> Operations.ApplyDRSRecommendations.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let started = try await guarded {
            let cluster = try await store.db.read { db in try Inventory.cluster(db, input.path.cluster) }
            return try await drs.apply(cluster, ids: body.ids)
        }
        return .accepted(.init(body: .json(started.map { Schemas.DRSApplied(recommendation: Self.recommendation($0.0), task: Self.task($0.1)) })))
    }

    func simulateDRS(_ input: Operations.SimulateDRS.Input) async throws -> Operations.SimulateDRS.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        guard (60...86_400).contains(body.sinceSeconds) else {
            throw ShepherdError.invalidField("sinceSeconds", "\(body.sinceSeconds) s is outside 60–86400 s (the load history keeps a day)")
        }
        let (report, config) = try await guarded {
            var cluster = try await store.db.read { db in try Inventory.cluster(db, input.path.cluster) }
            if let drs = body.drs {
                try DRSService.update(&cluster, mode: drs.mode?.rawValue, threshold: drs.threshold, baselineCPUPercent: drs.baselineCPUPercent,
                                      baselineMemoryPercent: drs.baselineMemoryPercent, metric: drs.metric?.rawValue,
                                      intervalSeconds: drs.intervalSeconds)
            }
            let report = try await drs.whatIf(cluster, sinceSeconds: body.sinceSeconds, settings: DRSService.settings(cluster),
                                              enabled: cluster.drsMode != "off", intervalSeconds: cluster.drsIntervalSeconds)
            return (report, Self.drsConfig(cluster))
        }
        func side(_ side: WhatIfReport.Side) -> Schemas.WhatIfSide {
            Schemas.WhatIfSide(migrations: side.migrations, secondsOverCeiling: .init(additionalProperties: side.secondsOverCeiling),
                               energyKWh: side.energyKWh)
        }
        return .ok(.init(body: .json(Schemas.WhatIfReport(
            since: report.since, until: report.until, intervalSeconds: report.intervalSeconds, rounds: report.rounds,
            ceilingPercent: Int((report.ceiling * 100).rounded()), drs: config,
            moves: report.moves.map { Schemas.WhatIfMove(at: $0.at, vm: $0.vm, from: $0.from, to: $0.to, reason: $0.reason) },
            simulated: side(report.simulated), actual: side(report.actual)))))
    }

    static func recommendation(_ view: DRSRecommendationView) -> Schemas.DRSRecommendation {
        let r = view.record
        return Schemas.DRSRecommendation(id: r.id, vm: view.vmName, from: view.fromHost, to: view.toHost, reason: r.reason,
                                         mandatory: r.mandatory, gainMHz: r.gainMHz, costMiB: r.costMiB,
                                         state: Schemas.DRSRecommendation.StatePayload(rawValue: r.state) ?? .failed,
                                         taskId: r.taskId, createdAt: r.createdAt)
    }

    func listRules(_ input: Operations.ListRules.Input) async throws -> Operations.ListRules.Output {
        let rules = try await guarded { try await drs.rules(input.path.cluster) }
        return .ok(.init(body: .json(rules.map(Self.rule))))
    }

    func createRule(_ input: Operations.CreateRule.Input) async throws -> Operations.CreateRule.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let rule = try await guarded {
            try await drs.createRule(input.path.cluster, name: body.name, kind: body.kind.rawValue, vms: body.vms,
                                     hosts: body.hosts ?? [], mandatory: body.mandatory)
        }
        return .created(.init(body: .json(Self.rule(rule))))
    }

    func deleteRule(_ input: Operations.DeleteRule.Input) async throws -> Operations.DeleteRule.Output {
        try await guarded { try await drs.deleteRule(input.path.cluster, input.path.rule) }
        return .noContent(.init())
    }

    static func rule(_ view: RuleView) -> Schemas.Rule {
        Schemas.Rule(id: view.record.id, name: view.record.name, kind: Schemas.RuleKind(rawValue: view.record.kind) ?? .keepApart,
                     vms: view.vmNames, hosts: view.hostNames, mandatory: view.record.mandatory, createdAt: view.record.createdAt)
    }

    func listHosts(_ input: Operations.ListHosts.Input) async throws -> Operations.ListHosts.Output {
        let hosts = try await guarded { try await store.db.read { db in try HostRecord.order(Column("name")).fetchAll(db).map { try Self.host($0, db) } } }
        return .ok(.init(body: .json(hosts)))
    }

    func getHost(_ input: Operations.GetHost.Input) async throws -> Operations.GetHost.Output {
        let host = try await guarded { try await store.db.read { db in try Self.host(Inventory.host(db, input.path.host), db) } }
        return .ok(.init(body: .json(host)))
    }

    func setHostMaintenance(_ input: Operations.SetHostMaintenance.Input) async throws -> Operations.SetHostMaintenance.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded {
            switch body.action {
            case .enter: try await maintenance.enter(input.path.host)
            case .exit: try await maintenance.exit(input.path.host)
            }
        }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func setHostBMC(_ input: Operations.SetHostBMC.Input) async throws -> Operations.SetHostBMC.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let host = try await guarded {
            let saved = try await power.setBMC(input.path.host, address: body.address, user: body.user, password: body.password,
                                               insecure: body.insecure ?? false)
            return try await store.db.read { db in try Self.host(saved, db) }
        }
        return .ok(.init(body: .json(host)))
    }

    func deleteHostBMC(_ input: Operations.DeleteHostBMC.Input) async throws -> Operations.DeleteHostBMC.Output {
        try await guarded { try await power.clearBMC(input.path.host) }
        return .noContent(.init())
    }

    func powerHost(_ input: Operations.PowerHost.Input) async throws -> Operations.PowerHost.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let action: PowerService.Action = switch body.action { case .on: .on; case .off: .off; case .reset: .reset }
        let task = try await guarded { try await power.power(input.path.host, action: action, force: body.force ?? false) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    static func host(_ host: HostRecord, _ db: Database) throws -> Schemas.Host {
        let cluster = try ClusterRecord.fetchOne(db, key: host.clusterId)
        let vms = try VMRecord.filter(Column("hostId") == host.id).fetchAll(db)
        let load = try Inventory.hostLoads(db)[host.id] ?? .init()
        return Schemas.Host(
            id: host.id, name: host.name, clusterId: host.clusterId, clusterName: cluster?.name ?? "",
            state: Schemas.HostState(rawValue: host.state) ?? .disconnected, address: host.address,
            cpuModel: host.cpuModel, cpuVendor: host.cpuVendor, cpuFlags: host.cpuFlags.split(separator: " ").map(String.init),
            providedCPUModel: host.providedCPUModel,
            cores: host.cores, memoryTotalMiB: host.memoryTotalMiB, memoryFreeMiB: host.memoryFreeMiB,
            memoryAllocatedMiB: load.memoryMiB, memoryReservedMiB: load.memoryReservedMiB, ksmSavedMiB: host.ksmSavedMiB,
            cgroups: host.cgroups, vmCount: vms.count, accelerator: host.accelerator, agentVersion: host.agentVersion, lastHeartbeat: host.lastHeartbeat,
            bmc: host.bmcAddress.map { address in
                Schemas.HostBMC(address: address, user: host.bmcUser ?? "", insecure: host.bmcInsecure,
                                powerState: host.powerState, powerCheckedAt: host.powerCheckedAt)
            }, leaseRenewedAt: host.leaseRenewedAt)
    }

    func listDatastores(_ input: Operations.ListDatastores.Input) async throws -> Operations.ListDatastores.Output {
        let rows = try await guarded {
            try await store.db.read { db in
                let hostNames = Dictionary(uniqueKeysWithValues: try HostRecord.fetchAll(db).map { ($0.id, $0.name) })
                let links = try DatastoreHostRecord.fetchAll(db)
                return try DatastoreRecord.order(Column("name")).fetchAll(db).map { store in
                    Schemas.Datastore(id: store.id, name: store.name, kind: Schemas.DatastoreKind(rawValue: store.kind) ?? .local,
                                      path: store.path,
                                      hosts: links.filter { $0.datastoreId == store.id }.compactMap { hostNames[$0.hostId] }.sorted(),
                                      capacityBytes: store.capacityBytes, freeBytes: store.freeBytes)
                }
            }
        }
        return .ok(.init(body: .json(rows)))
    }

    func addDatastore(_ input: Operations.AddDatastore.Input) async throws -> Operations.AddDatastore.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let record = try await guarded { try await datastores.add(name: body.name, kind: body.kind, path: body.path, hosts: body.hosts) }
        return .created(.init(body: .json(try await datastoreView(record))))
    }

    func removeDatastore(_ input: Operations.RemoveDatastore.Input) async throws -> Operations.RemoveDatastore.Output {
        let record = try await guarded { try await datastores.remove(input.path.datastore) }
        return .ok(.init(body: .json(.init(id: record.id, name: record.name, kind: Schemas.DatastoreKind(rawValue: record.kind) ?? .local,
                                           path: record.path, hosts: [], capacityBytes: record.capacityBytes, freeBytes: record.freeBytes))))
    }

    private func datastoreView(_ record: DatastoreRecord) async throws -> Schemas.Datastore {
        try await store.db.read { db in
            let hostNames = Dictionary(uniqueKeysWithValues: try HostRecord.fetchAll(db).map { ($0.id, $0.name) })
            let hosts = try DatastoreHostRecord.filter(Column("datastoreId") == record.id).fetchAll(db).compactMap { hostNames[$0.hostId] }.sorted()
            return Schemas.Datastore(id: record.id, name: record.name, kind: Schemas.DatastoreKind(rawValue: record.kind) ?? .local, path: record.path,
                                     hosts: hosts, capacityBytes: record.capacityBytes, freeBytes: record.freeBytes)
        }
    }

    func getDatastore(_ input: Operations.GetDatastore.Input) async throws -> Operations.GetDatastore.Output {
        let detail = try await guarded {
            try await store.db.read { db -> Schemas.DatastoreDetail in
                guard let found = try DatastoreRecord.filter(Column("name") == input.path.datastore || Column("id") == input.path.datastore).fetchOne(db) else {
                    throw ShepherdError.notFound("datastore", input.path.datastore)
                }
                let hostNames = Dictionary(uniqueKeysWithValues: try HostRecord.fetchAll(db).map { ($0.id, $0.name) })
                let hosts = try DatastoreHostRecord.filter(Column("datastoreId") == found.id).fetchAll(db).compactMap { hostNames[$0.hostId] }.sorted()
                let disks = try DiskRecord.filter(Column("datastore") == found.name).order(Column("name")).fetchAll(db)
                return Schemas.DatastoreDetail(
                    datastore: .init(id: found.id, name: found.name, kind: Schemas.DatastoreKind(rawValue: found.kind) ?? .local, path: found.path,
                                     hosts: hosts, capacityBytes: found.capacityBytes, freeBytes: found.freeBytes),
                    vms: try VMRecord.filter(Column("datastore") == found.name).order(Column("name")).fetchAll(db).map(\.name),
                    disks: disks.map(\.name),
                    templates: try TemplateRecord.filter(Column("datastore") == found.name).order(Column("name")).fetchAll(db).map(\.name),
                    provisionedBytes: disks.reduce(0) { $0 + $1.sizeBytes })
            }
        }
        return .ok(.init(body: .json(detail)))
    }

    func listTemplates(_ input: Operations.ListTemplates.Input) async throws -> Operations.ListTemplates.Output {
        let rows = try await guarded { try await store.db.read { db in try TemplateRecord.order(Column("name")).fetchAll(db) } }
        return .ok(.init(body: .json(rows.map(Self.template))))
    }

    func createTemplate(_ input: Operations.CreateTemplate.Input) async throws -> Operations.CreateTemplate.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        try Validate.name(body.name)
        for (field, value) in [("kernel", body.kernel), ("initrd", body.initrd), ("disk", body.disk)] {
            if value.isEmpty || value.hasPrefix("/") || value.split(separator: "/").contains("..") {
                throw ShepherdError.invalidField(field, "'\(value)' must be a path relative to the datastore, without '..'")
            }
        }
        let template = TemplateRecord(id: newID(), name: body.name, description: body.description ?? "", datastore: body.datastore,
                                      kernel: body.kernel, initrd: body.initrd, disk: body.disk, cmdline: body.cmdline, createdAt: Date())
        try await guarded {
            try await store.db.write { db in
                _ = try Inventory.datastore(db, named: body.datastore, field: "datastore")
                if try TemplateRecord.filter(Column("name") == body.name).fetchCount(db) > 0 {
                    throw ShepherdError(.alreadyExists, "name: a template named '\(body.name)' already exists")
                }
                try template.insert(db)
            }
        }
        return .created(.init(body: .json(Self.template(template))))
    }

    static func template(_ row: TemplateRecord) -> Schemas.Template {
        Schemas.Template(id: row.id, name: row.name, description: row.description, datastore: row.datastore, kernel: row.kernel,
                         initrd: row.initrd, disk: row.disk, cmdline: row.cmdline, createdAt: row.createdAt)
    }

    // MARK: VMs

    func listVMs(_ input: Operations.ListVMs.Input) async throws -> Operations.ListVMs.Output {
        let rows = try await guarded {
            try await store.db.read { db in
                let hostNames = Dictionary(uniqueKeysWithValues: try HostRecord.fetchAll(db).map { ($0.id, $0.name) })
                return try VMRecord.order(Column("name")).fetchAll(db).map { Self.vm($0, hostName: hostNames[$0.hostId] ?? "") }
            }
        }
        return .ok(.init(body: .json(await balloons.withMemory(rows))))
    }

    func getVM(_ input: Operations.GetVM.Input) async throws -> Operations.GetVM.Output {
        let vm = try await guarded {
            try await store.db.read { db in
                let vm = try Inventory.vm(db, input.path.vm)
                return Self.vm(vm, hostName: try HostRecord.fetchOne(db, key: vm.hostId)?.name ?? "")
            }
        }
        return .ok(.init(body: .json(await balloons.withMemory([vm])[0])))
    }

    static func vm(_ row: VMRecord, hostName: String) -> Schemas.Vm {
        Schemas.Vm(id: row.id, name: row.name, hostId: row.hostId, hostName: hostName, template: row.template, cpus: row.cpus,
                   memoryMiB: row.memoryMiB, state: Schemas.VMState(rawValue: row.state) ?? .unknown, stateReason: row.stateReason,
                   toolsStatus: row.toolsRunning ? .running : .notRunning, datastore: row.datastore, diskPath: row.diskPath,
                   pid: row.pid, createdAt: row.createdAt, haPolicy: Schemas.HAPolicy(rawValue: row.haPolicy),
                   haPriority: Schemas.HAPriority(rawValue: row.haPriority), drsExcluded: row.drsExcluded, linkedTemplate: row.linkedTemplate,
                   maxCpus: row.maxCpus, maxMemoryMiB: row.maxMemoryMiB,
                   qos: Schemas.VMQoS(cpuShares: row.cpuShares, cpuReservationMHz: row.cpuReservationMHz, cpuLimitMHz: row.cpuLimitMHz,
                                      memoryReservationMiB: row.memoryReservationMiB, memoryShares: row.memoryShares,
                                      memoryLimitMiB: row.memoryLimitMiB))
    }

    static func qosChange(_ body: Schemas.VMQoSUpdate) throws -> QoSChange {
        QoSChange(cpuShares: body.cpuShares, cpuReservationMHz: body.cpuReservationMHz, cpuLimitMHz: body.cpuLimitMHz,
                  memoryReservation: try body.memoryReservation.map { try MemoryAmount.parse($0, field: "memoryReservation") },
                  memoryShares: body.memoryShares,
                  memoryLimit: try body.memoryLimit.map { try MemoryAmount.parse($0, field: "memoryLimit") })
    }

    func setVMQoS(_ input: Operations.SetVMQoS.Input) async throws -> Operations.SetVMQoS.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let vm = try await guarded { try await qos.set(vm: input.path.vm, try Self.qosChange(body)) }
        let hostName = try await store.db.read { db in try HostRecord.fetchOne(db, key: vm.hostId)?.name ?? "" }
        return .ok(.init(body: .json(Self.vm(vm, hostName: hostName))))
    }

    func setClusterVMQoS(_ input: Operations.SetClusterVMQoS.Input) async throws -> Operations.SetClusterVMQoS.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let changed = try await guarded { try await qos.set(cluster: input.path.cluster, try Self.qosChange(body)) }
        let names = try await store.db.read { db in Dictionary(uniqueKeysWithValues: try HostRecord.fetchAll(db).map { ($0.id, $0.name) }) }
        return .ok(.init(body: .json(changed.map { Self.vm($0, hostName: names[$0.hostId] ?? "") })))
    }

    func updateVM(_ input: Operations.UpdateVM.Input) async throws -> Operations.UpdateVM.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let size = SizeChange(cpus: body.cpus, memoryMiB: body.memoryMiB, maxCpus: body.maxCpus, maxMemoryMiB: body.maxMemoryMiB)
        var onlineCpus: Int?
        if !size.isEmpty { onlineCpus = try await guarded { try await vms.resize(input.path.vm, size) }.onlineCpus }
        var vm = try await guarded {
            try await store.db.write { db in
                var vm = try Inventory.vm(db, input.path.vm)
                if let policy = body.haPolicy { vm.haPolicy = policy.rawValue }
                if let priority = body.haPriority { vm.haPriority = priority.rawValue }
                if let excluded = body.drsExcluded { vm.drsExcluded = excluded }
                try vm.update(db)
                return Self.vm(vm, hostName: try HostRecord.fetchOne(db, key: vm.hostId)?.name ?? "")
            }
        }
        vm.onlineCpus = onlineCpus
        return .ok(.init(body: .json(vm)))
    }

    func createVM(_ input: Operations.CreateVM.Input) async throws -> Operations.CreateVM.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded {
            try await vms.create(VMCreateRequest(name: body.name, cpus: body.cpus, memoryMiB: body.memoryMiB,
                                                 template: body.template, host: body.host, datastore: body.datastore,
                                                 linked: body.linked ?? false, maxCpus: body.maxCpus, maxMemoryMiB: body.maxMemoryMiB))
        }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func deleteVM(_ input: Operations.DeleteVM.Input) async throws -> Operations.DeleteVM.Output {
        let task = try await guarded { try await vms.delete(input.path.vm, force: input.query.force ?? false) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func startVM(_ input: Operations.StartVM.Input) async throws -> Operations.StartVM.Output {
        let task = try await guarded { try await vms.start(input.path.vm) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func stopVM(_ input: Operations.StopVM.Input) async throws -> Operations.StopVM.Output {
        let force: Bool
        switch input.body { case .json(let body)?: force = body.force ?? false; case nil: force = false }
        let task = try await guarded { try await vms.stop(input.path.vm, force: force) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func rebootVM(_ input: Operations.RebootVM.Input) async throws -> Operations.RebootVM.Output {
        let force: Bool
        switch input.body { case .json(let body)?: force = body.force ?? false; case nil: force = false }
        let task = try await guarded { try await vms.reboot(input.path.vm, force: force) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func hibernateVM(_ input: Operations.HibernateVM.Input) async throws -> Operations.HibernateVM.Output {
        let task = try await guarded { try await vms.hibernate(input.path.vm) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func migrateVM(_ input: Operations.MigrateVM.Input) async throws -> Operations.MigrateVM.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        if body.dryRun == true {
            let check = try await guarded { try await migrations.preflight(input.path.vm, target: body.target, datastore: body.datastore) }
            return .ok(.init(body: .json(.init(vm: check.vm, source: check.source, target: check.target, ok: check.refusals.isEmpty,
                                                refusals: check.refusals.map { .init(check: $0.check.rawValue, message: $0.message) }))))
        }
        let task = try await guarded { try await migrations.migrate(input.path.vm, target: body.target, datastore: body.datastore) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func migrateVMStorage(_ input: Operations.MigrateVMStorage.Input) async throws -> Operations.MigrateVMStorage.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let type = body._type.flatMap { DiskType(rawValue: $0.rawValue) }
        if body.dryRun == true {
            let plan = try await guarded {
                try await storage.plan(input.path.vm, datastore: body.datastore, disks: body.disks, type: type, maxBytesPerSecond: body.maxBytesPerSecond)
            }
            return .ok(.init(body: .json(.init(
                vm: plan.vm.name, datastore: plan.target.name, ok: plan.refusals.isEmpty, disks: plan.moves.map(\.name),
                bytes: plan.moves.reduce(0) { $0 + StorageMigration.bytesNeeded($1.check, as: plan.type) },
                refusals: plan.refusals.map { .init(check: $0.check.rawValue, message: $0.message) }))))
        }
        let task = try await guarded {
            try await storage.migrate(input.path.vm, datastore: body.datastore, disks: body.disks, type: type, maxBytesPerSecond: body.maxBytesPerSecond)
        }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func cloneVM(_ input: Operations.CloneVM.Input) async throws -> Operations.CloneVM.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded { () -> TaskRecord in
            let (isVM, isTemplate) = try await store.db.read { db in
                (try VMRecord.filter(Column("name") == input.path.vm || Column("id") == input.path.vm).fetchCount(db) > 0,
                 try TemplateRecord.filter(Column("name") == input.path.vm).fetchCount(db) > 0)
            }
            if isVM {
                if body.linked == true {
                    throw ShepherdError(.illegalState, "linked clones are made from templates; make '\(input.path.vm)' one first ('shepherd vm to-template \(input.path.vm)') or drop --linked for a full clone")
                }
                return try await vms.clone(input.path.vm, name: body.name, datastore: body.datastore)
            }
            guard isTemplate else { throw ShepherdError.notFound("VM or template", input.path.vm) }
            return try await vms.create(VMCreateRequest(name: body.name, cpus: body.cpus ?? 1, memoryMiB: body.memoryMiB ?? 128,
                                                        template: input.path.vm, datastore: body.datastore, linked: body.linked ?? false))
        }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func convertVMToTemplate(_ input: Operations.ConvertVMToTemplate.Input) async throws -> Operations.ConvertVMToTemplate.Output {
        var name: String?, description: String?
        if case .json(let body)? = input.body { name = body.name; description = body.description }
        let template = try await guarded { [name, description] in try await vms.toTemplate(input.path.vm, name: name, description: description) }
        return .created(.init(body: .json(Self.template(template))))
    }

    func execInVM(_ input: Operations.ExecInVM.Input) async throws -> Operations.ExecInVM.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let result = try await guarded { try await vms.exec(input.path.vm, command: body.command, timeoutSeconds: body.timeoutSeconds) }
        return .ok(.init(body: .json(.init(exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr))))
    }

    // MARK: disks

    func listDisks(_ input: Operations.ListDisks.Input) async throws -> Operations.ListDisks.Output {
        let views = try await guarded { try await vms.disks.list(vm: input.query.vm) }
        return .ok(.init(body: .json(views.map(Self.disk))))
    }

    func getDisk(_ input: Operations.GetDisk.Input) async throws -> Operations.GetDisk.Output {
        let view = try await guarded { try await vms.disks.show(input.path.disk) }
        return .ok(.init(body: .json(Self.disk(view))))
    }

    func createDisk(_ input: Operations.CreateDisk.Input) async throws -> Operations.CreateDisk.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded {
            try await vms.disks.create(.init(vm: body.vm, name: body.name, sizeBytes: body.sizeBytes,
                                             type: DiskType(rawValue: body._type?.rawValue ?? "thin") ?? .thin,
                                             mode: DiskMode(rawValue: body.mode?.rawValue ?? "persistent") ?? .persistent,
                                             datastore: body.datastore))
        }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func deleteDisk(_ input: Operations.DeleteDisk.Input) async throws -> Operations.DeleteDisk.Output {
        let task = try await guarded { try await vms.disks.delete(input.path.disk) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func attachDisk(_ input: Operations.AttachDisk.Input) async throws -> Operations.AttachDisk.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded { try await vms.disks.attach(input.path.disk, to: body.vm) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func detachDisk(_ input: Operations.DetachDisk.Input) async throws -> Operations.DetachDisk.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded { try await vms.disks.detach(input.path.disk, from: body.vm) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func resizeDisk(_ input: Operations.ResizeDisk.Input) async throws -> Operations.ResizeDisk.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded { try await vms.disks.resize(input.path.disk, sizeBytes: body.sizeBytes) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func reclaimDiskSpace(_ input: Operations.ReclaimDiskSpace.Input) async throws -> Operations.ReclaimDiskSpace.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded { try await vms.disks.reclaim(input.path.vm, disk: body.disk) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    static func disk(_ view: DiskView) -> Schemas.Disk {
        let disk = view.disk
        return Schemas.Disk(id: disk.id, name: disk.name, datastore: disk.datastore, path: disk.path, format: disk.format,
                            _type: Schemas.DiskType(rawValue: disk.type) ?? .thin, mode: Schemas.DiskMode(rawValue: disk.mode) ?? .persistent,
                            sizeBytes: disk.sizeBytes, allocatedBytes: view.image?.allocatedBytes, serial: disk.definition().serial,
                            attachedTo: view.attachedTo.map(\.name), busyTask: disk.busyTask, createdAt: disk.createdAt)
    }

    // MARK: snapshots

    func listSnapshots(_ input: Operations.ListSnapshots.Input) async throws -> Operations.ListSnapshots.Output {
        let list = try await guarded { try await snapshots.list(input.path.vm) }
        let names = Dictionary(uniqueKeysWithValues: list.snapshots.map { ($0.id, $0.name) })
        return .ok(.init(body: .json(.init(
            vm: list.vm.name, current: list.vm.currentSnapshot.flatMap { names[$0] },
            snapshots: list.snapshots.map { snapshot in
                .init(id: snapshot.id, name: snapshot.name, parent: snapshot.parentId.flatMap { names[$0] }, description: snapshot.description,
                      live: snapshot.live, quiesced: snapshot.quiesced, memory: snapshot.memoryFile != nil, disks: snapshot.imageMap.count,
                      createdAt: snapshot.createdAt)
            }))))
    }

    func createSnapshot(_ input: Operations.CreateSnapshot.Input) async throws -> Operations.CreateSnapshot.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded {
            try await snapshots.create(input.path.vm, name: body.name, description: body.description, quiesce: body.quiesce ?? false,
                                       memory: body.memory ?? false)
        }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func revertSnapshot(_ input: Operations.RevertSnapshot.Input) async throws -> Operations.RevertSnapshot.Output {
        let task = try await guarded { try await snapshots.revert(input.path.vm, to: input.path.snapshot) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func deleteSnapshot(_ input: Operations.DeleteSnapshot.Input) async throws -> Operations.DeleteSnapshot.Output {
        let task = try await guarded { try await snapshots.delete(input.path.vm, snapshot: input.path.snapshot) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    // MARK: tasks and events

    func listTasks(_ input: Operations.ListTasks.Input) async throws -> Operations.ListTasks.Output {
        let limit = try Self.limit(input.query.limit)
        let rows = try await guarded {
            try await store.db.read { db in try TaskRecord.order(Column("createdAt").desc).limit(limit).fetchAll(db) }
        }
        return .ok(.init(body: .json(rows.map(Self.task))))
    }

    func getTask(_ input: Operations.GetTask.Input) async throws -> Operations.GetTask.Output {
        let row = try await guarded { try await store.db.read { db in try TaskRecord.fetchOne(db, key: input.path.task) } }
        guard let row else { throw ShepherdError.notFound("task", input.path.task) }
        return .ok(.init(body: .json(Self.task(row))))
    }

    func cancelTask(_ input: Operations.CancelTask.Input) async throws -> Operations.CancelTask.Output {
        let task = try await guarded { try await tasks.cancel(input.path.task) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    static func task(_ row: TaskRecord) -> Schemas.Task {
        Schemas.Task(id: row.id, kind: row.kind, targetType: row.targetType, targetId: row.targetId, targetName: row.targetName,
                     state: Schemas.TaskState(rawValue: row.state) ?? .failed, progress: row.progress, message: row.message,
                     error: row.errorCode.map { Schemas._Error(code: $0, message: row.errorMessage ?? "") },
                     createdAt: row.createdAt, startedAt: row.startedAt, finishedAt: row.finishedAt)
    }

    func listEvents(_ input: Operations.ListEvents.Input) async throws -> Operations.ListEvents.Output {
        let limit = try Self.limit(input.query.limit)
        let rows = try await guarded {
            try await store.db.read { db in
                var request = EventRecord.order(Column("id").desc)
                if let target = input.query.target { request = request.filter(Column("targetName") == target || Column("targetId") == target) }
                if let kind = input.query.kind { request = request.filter(Column("kind").like("\(kind)%")) }
                return try request.limit(limit).fetchAll(db)
            }
        }
        return .ok(.init(body: .json(rows.map { row in
            Schemas.Event(id: row.id ?? 0, time: row.time, severity: Schemas.Event.SeverityPayload(rawValue: row.severity) ?? .info,
                          kind: row.kind, targetType: row.targetType, targetId: row.targetId, targetName: row.targetName, message: row.message)
        })))
    }

    static func limit(_ value: Int?) throws -> Int {
        guard let value else { return 100 }
        guard (1...1000).contains(value) else { throw ShepherdError.invalidField("limit", "\(value) is outside 1–1000") }
        return value
    }

    // MARK: agents

    func registerAgent(_ input: Operations.RegisterAgent.Input) async throws -> Operations.RegisterAgent.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let credential = try await guarded {
            try await hosts.register(bearer: RequestBearer.token, name: body.name, cluster: body.cluster, address: body.address,
                                     host: Self.report(body.host), datastores: body.datastores.map(Self.report),
                                     agentVersion: body.agentVersion, accelerator: body.accelerator)
        }
        network.joined(hostID: credential.hostId)
        return .ok(.init(body: .json(.init(hostId: credential.hostId, token: credential.token))))
    }

    func agentHeartbeat(_ input: Operations.AgentHeartbeat.Input) async throws -> Operations.AgentHeartbeat.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let guests = body.guests.map { guest in
            AgentWire.GuestStatus(vmId: guest.vmId, power: AgentWire.GuestPower(rawValue: guest.power.rawValue) ?? .crashed,
                                  toolsRunning: guest.toolsRunning, pid: guest.pid.map(Int32.init), reason: guest.reason,
                                  cpuSeconds: guest.cpuSeconds, balloonMiB: guest.balloonMiB, guestAvailableMiB: guest.guestAvailableMiB)
        }
        let outcome = try await guarded {
            try await hosts.heartbeat(bearer: RequestBearer.token, hostId: body.hostId, host: Self.report(body.host),
                                      accelerator: body.accelerator, agentVersion: body.agentVersion,
                                      datastores: body.datastores.map(Self.report), guests: guests, leaseRenewedAt: body.leaseRenewedAt)
        }
        await drs.record(guests, hostId: body.hostId)
        await balloons.adjust(hostId: body.hostId, guests: guests)
        network.heartbeat(hostID: body.hostId)
        if !outcome.failures.isEmpty { await ha.handleFailures(outcome.failures) }
        return .ok(.init(body: .json(.init(isolationResponse: Schemas.IsolationResponse(rawValue: outcome.isolationResponse.rawValue) ?? .leaveRunning,
                                           peers: outcome.peers))))
    }

    static func report(_ host: Schemas.HostReport) -> HostReport {
        HostReport(providedCPUModel: host.providedCPUModel, cpuModel: host.cpuModel, cpuVendor: host.cpuVendor, cpuFlags: host.cpuFlags, cores: host.cores,
                   memoryTotalBytes: host.memoryTotalBytes, memoryAvailableBytes: host.memoryAvailableBytes,
                   ksmSavedBytes: host.ksmSavedBytes, cgroups: host.cgroups)
    }

    static func report(_ store: Schemas.DatastoreReport) -> DatastoreReport {
        DatastoreReport(name: store.name, kind: store.kind.rawValue, path: store.path, capacityBytes: store.capacityBytes, freeBytes: store.freeBytes)
    }

    // MARK: helpers

    var unsupportedBody: ShepherdError { ShepherdError(.invalidBody, "the body must be application/json") }

    /// Keeps ShepherdErrors as they are and turns anything unexpected into `internal`, so the
    /// error middleware can tell our failures from requests the runtime could not decode.
    func guarded<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch let error as ShepherdError { throw error } catch {
            throw ShepherdError(.internal, "\(error)")
        }
    }
}
