#!/usr/bin/env python3
"""Interop check of a vnsnap coordinator from a gRPC implementation other than grpc-js.

Python grpcio (the C-core gRPC stack; Debian: python3-grpcio) with stubs generated at run time
by grpc_tools.protoc (Debian: python3-grpc-tools) from the repository's proto/ directory:

  1. health: grpc.health.v1.Health/Check for "" and "vnsnap.v1.CoordinatorService" -> SERVING
  2. reflection: grpc.reflection.v1 (falling back to v1alpha) lists the vnsnap services and
     resolves the file descriptor holding vnsnap.v1.CoordinatorService (and its imports) into a
     descriptor pool; its methods must match the ones compiled from proto/
  3. ListVnes, printed as proto3 JSON
  4. optionally DefineVne + StartVne from a JSON file (parsed by protobuf's own json_format)
  5. CreateSnapshot on a running VNE, the stream read to its end (every event counted, the
     state changes listed, the final record printed)
  6. errors: GetSnapshot of an id that does not exist -> NOT_FOUND with the vnsnap error code
     in the trailing metadata (vnsnap-error-code: ERR_NOT_FOUND)

Prints one JSON document on stdout ("problems": failed checks, "warnings": things that work here
but hurt some clients) and exits 0 when every check passed, 1 otherwise, 2 on bad usage or a
missing toolchain.

  /usr/bin/python3 test/interop/interop_check.py --address 127.0.0.1:7443 [--vne blue]
      [--define test/interop/sim-vne.json] [--timeout 10] [--snapshot-timeout 300]
      [--ca ca.pem --cert client-op.pem --key client-op-key.pem]

With --ca, --cert and --key the channel is mutual TLS (grpc.ssl_channel_credentials: the
coordinator verified against the CA, the client certificate presented; an operator's for the
define and snapshot steps), as every vnsnap coordinator off loopback requires; without them,
plaintext (a loopback coordinator started with --insecure-plaintext).
"""
import argparse
import importlib
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SERVICE = 'vnsnap.v1.CoordinatorService'
VNSNAP_PROTOS = ['vnsnap/v1/types.proto', 'vnsnap/v1/coordinator.proto']
STD_PROTOS = [
    'vnsnap_interop/health/v1/health.proto',
    'vnsnap_interop/reflection/v1/reflection.proto',
    'vnsnap_interop/reflection/v1alpha/reflection.proto',
]


def generate_stubs(proto_dir, out_dir):
    """Compile the .proto files into Python modules under out_dir (grpc_tools.protoc)."""
    from grpc_tools import protoc
    import grpc_tools
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')
    args = ['grpc_tools.protoc', '-I' + proto_dir, '-I' + os.path.join(HERE, 'proto'), '-I' + wkt,
            '--python_out=' + out_dir, '--grpc_python_out=' + out_dir] + VNSNAP_PROTOS + STD_PROTOS
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError('grpc_tools.protoc failed (exit %d) on %s' % (rc, proto_dir))
    sys.path.insert(0, out_dir)


def mod(name):
    return importlib.import_module(name)


def check_health(channel, timeout, report, problems):
    health_pb2 = mod('vnsnap_interop.health.v1.health_pb2')
    health_grpc = mod('vnsnap_interop.health.v1.health_pb2_grpc')
    stub = health_grpc.HealthStub(channel)
    out = {}
    for service in ['', SERVICE]:
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        out[service] = status
        if status != 'SERVING':
            problems.append('health: %r is %s, not SERVING' % (service, status))
    report['health'] = out


def reflection_call(channel, version, requests, timeout):
    pb2 = mod('vnsnap_interop.reflection.%s.reflection_pb2' % version)
    grpc_mod = mod('vnsnap_interop.reflection.%s.reflection_pb2_grpc' % version)
    stub = grpc_mod.ServerReflectionStub(channel)
    reqs = [pb2.ServerReflectionRequest(**r) for r in requests]
    return list(stub.ServerReflectionInfo(iter(reqs), timeout=timeout))


def check_reflection(channel, timeout, report, problems, warnings):
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool
    out = {}
    responses = None
    for version in ['v1', 'v1alpha']:
        try:
            responses = reflection_call(channel, version, [{'list_services': ''}, {'file_containing_symbol': SERVICE}], timeout)
            out['api'] = 'grpc.reflection.%s' % version
            break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
    if responses is None:
        problems.append('reflection: neither grpc.reflection.v1 nor v1alpha is served')
        report['reflection'] = out
        return
    listed = responses[0]
    if listed.HasField('error_response'):
        problems.append('reflection: list_services failed: %s' % listed.error_response.error_message)
    services = sorted(s.name for s in listed.list_services_response.service)
    out['services'] = services
    if SERVICE not in services:
        problems.append('reflection: %s is not listed (got %s)' % (SERVICE, ', '.join(services)))
    if 'grpc.health.v1.Health' not in services:
        # Not fatal, but grpcurl resolves every method it calls through reflection.
        warnings.append('reflection: grpc.health.v1.Health is served but not listed, so reflection-only clients (grpcurl) cannot call it')
    found = responses[1]
    if found.HasField('error_response'):
        problems.append('reflection: file_containing_symbol %s failed: %s' % (SERVICE, found.error_response.error_message))
        report['reflection'] = out
        return
    files = {}
    for raw in found.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto()
        fd.ParseFromString(raw)
        files[fd.name] = fd
    # Fetch imports the server did not send along (servers may send only the one file).
    missing = [d for f in list(files.values()) for d in f.dependency if d not in files]
    while missing:
        name = missing.pop()
        if name in files:
            continue
        r = reflection_call(channel, out['api'].split('.')[-1], [{'file_by_filename': name}], timeout)[0]
        for raw in r.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto()
            fd.ParseFromString(raw)
            files.setdefault(fd.name, fd)
            missing.extend(d for d in fd.dependency if d not in files)
    out['files'] = sorted(files)
    # What the server says must be the contract in proto/: every message the reflected files
    # define must have the fields (name, number, type) compiled here from proto/.
    local_pool = descriptor_pool.Default()
    mismatches = []
    for f in files.values():
        for m in f.message_type:
            full = (f.package + '.' if f.package else '') + m.name
            try:
                local = local_pool.FindMessageTypeByName(full)
            except KeyError:
                continue  # e.g. the agent's messages: not compiled here
            want = sorted((fd.name, fd.number) for fd in local.fields)
            got = sorted((fd.name, fd.number) for fd in m.field)
            if want != got:
                diff = sorted(set(got) - set(want))[:3]
                mismatches.append('%s has fields %s, proto/ says %s' % (full, diff, sorted(set(want) - set(got))[:3]))
    out['fieldMismatches'] = len(mismatches)
    if mismatches:
        problems.append('reflection: %d served messages differ from proto/, e.g. %s' % (len(mismatches), mismatches[0]))
    # A strict descriptor pool (the C++/upb runtime; grpcurl and Go validate the same way) must
    # accept the served files.
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name in added:
            return
        for d in files[name].dependency:
            add(d)
        pool.Add(files[name])
        added.add(name)

    try:
        for name in files:
            add(name)
        svc = pool.FindServiceByName(SERVICE)
        out['file'] = svc.file.name
        methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in svc.methods}
        out['descriptorsValid'] = True
    except (TypeError, KeyError) as e:
        out['descriptorsValid'] = False
        problems.append('reflection: the served descriptors are rejected by a strict protobuf runtime: %s' % ' '.join(str(e).split()))
        # Lenient fallback: read the service straight from the raw FileDescriptorProto.
        methods = {}
        for f in files.values():
            for sd in f.service:
                if (f.package + '.' + sd.name) == SERVICE:
                    out['file'] = f.name
                    qual = lambda t, pkg=f.package: t.lstrip('.') if t.startswith('.') else pkg + '.' + t
                    methods = {m.name: (qual(m.input_type), qual(m.output_type)) for m in sd.method}
    out['methods'] = sorted(methods)
    local = mod('vnsnap.v1.coordinator_pb2').DESCRIPTOR.services_by_name['CoordinatorService']
    local_methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in local.methods}
    out['methodsMatchProto'] = local_methods == methods
    if local_methods != methods:
        problems.append('reflection: the served CoordinatorService methods differ from proto/ (%s vs %s)' % (sorted(methods), sorted(local_methods)))
    report['reflection'] = out


def to_json(message):
    from google.protobuf import json_format
    return json_format.MessageToDict(message, including_default_value_fields=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--address', required=True, help='the coordinator, host:port')
    ap.add_argument('--proto-dir', default=os.path.join(REPO, 'proto'), help='directory holding vnsnap/v1/*.proto')
    ap.add_argument('--vne', help='VNE to snapshot (default: the defined one, or the first RUNNING one)')
    ap.add_argument('--define', help='a VNE JSON file to DefineVne and StartVne first')
    ap.add_argument('--timeout', type=float, default=10.0, help='seconds per unary call')
    ap.add_argument('--snapshot-timeout', type=float, default=300.0, help='seconds for the CreateSnapshot stream')
    ap.add_argument('--ca', help='CA certificate (PEM) the coordinator is signed by: mutual TLS')
    ap.add_argument('--cert', help='client certificate (PEM)')
    ap.add_argument('--key', help='client private key (PEM)')
    args = ap.parse_args()
    tls = [args.ca, args.cert, args.key]
    if any(tls) and not all(tls):
        print(json.dumps({'ok': False, 'problems': ['--ca, --cert and --key go together']}))
        return 2

    try:
        import grpc
        from google.protobuf import json_format
    except ImportError as e:
        print(json.dumps({'ok': False, 'problems': ['python gRPC is missing (%s): apt-get install -y python3-grpcio python3-grpc-tools' % e]}))
        return 2

    report = {'address': args.address, 'implementation': 'grpcio %s (C core), python %s' % (grpc.__version__, sys.version.split()[0])}
    problems = []
    warnings = []
    with tempfile.TemporaryDirectory(prefix='vnsnap-interop-') as out_dir:
        generate_stubs(args.proto_dir, out_dir)
        types_pb2 = mod('vnsnap.v1.types_pb2')
        coord_pb2 = mod('vnsnap.v1.coordinator_pb2')
        coord_grpc = mod('vnsnap.v1.coordinator_pb2_grpc')
        if args.ca:
            def read(f):
                with open(f, 'rb') as fh:
                    return fh.read()
            creds = grpc.ssl_channel_credentials(root_certificates=read(args.ca), private_key=read(args.key), certificate_chain=read(args.cert))
            channel = grpc.secure_channel(args.address, creds)
            report['transport'] = 'mutual TLS'
        else:
            channel = grpc.insecure_channel(args.address)
            report['transport'] = 'plaintext'
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            report['problems'] = ['cannot connect to %s within %.0f s' % (args.address, args.timeout)]
            report['ok'] = False
            print(json.dumps(report, indent=2))
            return 1
        stub = coord_grpc.CoordinatorServiceStub(channel)
        steps = [
            ('health', lambda: check_health(channel, args.timeout, report, problems)),
            ('reflection', lambda: check_reflection(channel, args.timeout, report, problems, warnings)),
        ]
        for name, step in steps:
            try:
                step()
            except grpc.RpcError as e:
                problems.append('%s: %s %s' % (name, e.code().name, e.details()))

        vne = args.vne
        try:
            if args.define:
                with open(args.define) as f:
                    spec = json_format.ParseDict(json.load(f), types_pb2.Vne())
                defined = stub.DefineVne(coord_pb2.DefineVneRequest(vne=spec), timeout=args.timeout)
                started = stub.StartVne(coord_pb2.StartVneRequest(name=spec.name), timeout=args.timeout)
                report['defineVne'] = {'name': defined.name, 'state': types_pb2.VneState.Name(started.vne.state)}
                vne = vne or spec.name
            listed = stub.ListVnes(coord_pb2.ListVnesRequest(), timeout=args.timeout)
            report['listVnes'] = to_json(listed)
            if not vne:
                running = [v.name for v in listed.vnes if v.state == types_pb2.VNE_STATE_RUNNING]
                vne = running[0] if running else None
        except grpc.RpcError as e:
            problems.append('vnes: %s %s' % (e.code().name, e.details()))

        if vne:
            events, states, final, kinds = 0, [], None, {}
            try:
                req = coord_pb2.CreateSnapshotRequest(vne=vne, mode=types_pb2.SNAPSHOT_MODE_PRECOPY, description='interop check (python grpcio)')
                for ev in stub.CreateSnapshot(req, timeout=args.snapshot_timeout):
                    events += 1
                    kind = ev.WhichOneof('event')
                    kinds[kind] = kinds.get(kind, 0) + 1
                    if kind == 'state':
                        states.append(types_pb2.SnapshotState.Name(ev.state))
                    elif kind == 'done':
                        final = ev.done
                report['createSnapshot'] = {'vne': vne, 'events': events, 'eventKinds': kinds, 'states': states,
                                            'final': to_json(final) if final is not None else None}
                if final is None:
                    problems.append('createSnapshot: the stream ended without a final record')
                elif final.state != types_pb2.SNAPSHOT_STATE_COMPLETE:
                    problems.append('createSnapshot: snapshot %s ended %s: %s' % (final.id, types_pb2.SnapshotState.Name(final.state), final.error))
            except grpc.RpcError as e:
                problems.append('createSnapshot: %s %s' % (e.code().name, e.details()))
        else:
            report['createSnapshot'] = None
            problems.append('createSnapshot: no RUNNING VNE to snapshot (pass --vne or --define)')

        try:
            stub.GetSnapshot(coord_pb2.GetSnapshotRequest(id='interop-no-such-snapshot'), timeout=args.timeout)
            problems.append('errors: GetSnapshot of an unknown id succeeded')
        except grpc.RpcError as e:
            trailers = dict(e.trailing_metadata() or ())
            report['errors'] = {'status': e.code().name, 'details': e.details(), 'vnsnapErrorCode': trailers.get('vnsnap-error-code')}
            if e.code() != grpc.StatusCode.NOT_FOUND:
                problems.append('errors: GetSnapshot of an unknown id gave %s, not NOT_FOUND' % e.code().name)
            if trailers.get('vnsnap-error-code') != 'ERR_NOT_FOUND':
                problems.append('errors: no vnsnap-error-code ERR_NOT_FOUND in the trailers (got %r)' % trailers.get('vnsnap-error-code'))
        channel.close()

    report['problems'] = problems
    report['warnings'] = warnings
    report['ok'] = not problems
    print(json.dumps(report, indent=2))
    return 0 if not problems else 1


if __name__ == '__main__':
    sys.exit(main())
