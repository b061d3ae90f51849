# Yesterday's store: a store of format 2, written by the previous build
# (t/data/store-format-2.pl made t/data/store-format-2.dump.gz with it)
# and full to MDB_MAP_FULL, is upgraded in place when nginx starts.
#   - nginx -t accepts it and says that the start upgrades it.
#   - An upgrade that does not fit (a map no larger than the data) fails
#     as a whole: nginx does not start, the message says why, the store
#     is unchanged.
#   - With a larger map the upgrade runs once: format 3, every account's
#     use counted exactly (verify walks the records), keys, endpoints and
#     executions as they were, the deliveries in their queues (a parked
#     one goes when its endpoint is enabled again, a waiting one on a
#     retry), and the old due index gone.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Compress::Zlib ();
use File::Path qw(make_path);
use MR::Test qw(:all);
use MR::Receiver qw(:all);

MR::Test::lmdb_only('the upgrade of an LMDB store of the previous format');

for my $tool (qw(mdb_load mdb_dump mdb_stat)) {
    plan skip_all => "$tool not found (Debian: lmdb-utils)"
        unless grep { -x "$_/$tool" } split /:/, $ENV{PATH};
}

my $data = "$FindBin::Bin/data";
open my $fh, '<', "$data/store-format-2.json" or die "$data: $!";
my $m = json_decode(do { local $/; <$fh> });
close $fh;

sub http_with_map {
    my ($size) = @_;
    return <<"HTTP";
modelroute_store_map_size $size;
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;
modelroute_webhook_retry 3650d;
modelroute_webhook_max_age 3650d;
modelroute_retention off;
modelroute_route sim /sim protocol=openai_chat;
modelroute_model demo-chat per_request=0.04 timeout=7d;
modelroute_model sim-chat per_request=0.01 routes=sim;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; client_max_body_size 256k; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /sim { internal; modelroute_simulator; }
}
HTTP
}

my $t = MR::Test->new(http => http_with_map('1m'));
my $store = $t->store;
make_path($store);

open $fh, '<:raw', "$data/store-format-2.dump.gz" or die $!;
my $dump = Compress::Zlib::memGunzip(do { local $/; <$fh> });
close $fh;
ok(length $dump, 'the recorded store of format 2');
open my $load, '|-', "mdb_load -f /dev/stdin $store 2>/dev/null"
    or die "mdb_load: $!";
print $load $dump;
close $load;
is($?, 0, 'loaded with mdb_load');

sub version {
    my $meta = `mdb_dump -s meta -p $store 2>/dev/null`;
    return $meta =~ /^ version\n \\0(\d)\\00\\00\\00$/m ? $1 : undef;
}

sub snapshot { return scalar `mdb_dump -a $store` }

is(version(), 2, 'format 2');

# ---- nginx -t: accepted, the start upgrades it
my ($rc, $out) = $t->test_config;
is($rc, 0, 'nginx -t accepts a store of format 2') or diag $out;
like($t->read_log,
    qr/format 2: nginx upgrades it to format 3 when it starts/,
    '... and says that the start upgrades it');
is(version(), 2, 'nginx -t leaves it in format 2');
my $before = snapshot();

# ---- no room for the upgrade: nothing changes
ok(-s "$store/data.mdb" > 1024 * 1024, 'the data is larger than 1m');
ok(!eval { $t->start; 1 }, 'with no room in the map nginx does not start');
like($t->read_log, qr/\[emerg\].* from format 2 to 3 failed: MDB_MAP_FULL/,
    '... the message says why');
like($t->read_log, qr/the store is unchanged \(format 2\): raise (?#
    )modelroute_store_map_size and start nginx again/,
    '... and what to do');
is(version(), 2, 'the store is still of format 2');
is(snapshot(), $before, '... record for record');
truncate $t->error_log_path, 0;

# ---- room: the upgrade, once
$t->write_config(http => http_with_map('4m'));
$t->start;
like($t->read_log, qr/upgraded[ ]to[ ]format[ ]3:[ ]\d+[ ]records[ ]counted,
    [ ]\d+[ ]pending[ ]deliveries[ ]queued/x, 'upgraded at the start');
is(version(), 3, 'format 3');
my $stat = `mdb_stat -a $store`;
like($stat, qr/Status of dlvq/, 'the delivery queues are there');
unlike($stat, qr/Status of dlvdue/, 'the old due index is gone');

my ($a, $b) = ($m->{a}, $m->{b});
for my $acc ($a, $b) {
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, "verify $acc->{org}: ledger and use exact")
        or diag explain $v;
}
my $acct = $t->admin(GET => "/accounts/$a->{org}")->{json};
is($acct->{usage}{keys}, 2, 'the active keys counted (the revoked and the '
    . 'rotated ones are not)');
is($acct->{usage}{endpoints}, 2, 'the endpoints counted');
ok($acct->{usage}{bytes} > 0, 'the stored bytes counted');

# keys, executions, lists as they were
is($t->req(GET => '/v1/balance', auth($a->{key}))->{status}, 200,
    'a key of format 2 authenticates');
is($t->req(GET => '/v1/balance', auth($a->{successor}))->{status}, 200,
    '... so does the successor of a rotated key');
for my $x (@{ $a->{completed} }) {
    my $e = $t->get_exec($a->{key}, $x)->{json};
    is($e->{status}, 'COMPLETED', "$x: COMPLETED");
    ok($e->{result}, '... with its result');
}
is(scalar($t->list_all($a->{key}, 'model=sim-chat')), 3,
    'a filtered list');
is($t->create_exec($a->{key}, $t->exec_body)->{status}, 202,
    'a new execution');

# the deliveries in their queues
my $recv = MR::Receiver->new;
$recv->start;
my $r = $t->req(PATCH => "/v1/webhooks/endpoints/$a->{e2}", auth($a->{key}),
    { is_active => JSON::PP::true, url => $recv->url('/back') });
is($r->{status}, 200, 'the deactivated endpoint enabled again');
ok($recv->wait_requests(1, path => '/back', timeout => 15),
    '... its parked delivery goes out');
my $d = wait_delivery($t, $a->{key}, $a->{e2}, $a->{parked},
    sub { $_[0]{status} eq 'succeeded' }, 10) // {};
is($d->{status}, 'succeeded', '... and succeeds');

my $x = $a->{dead_hook}[0];
my ($w) = @{ wh_exec_deliveries($t, $a->{key}, $x) // [] };
is($w && $w->{status}, 'pending', 'a webhook_url delivery waits for its retry');
my $n = scalar @{ $w->{attempts} // [] };
is($t->req(POST => "/v1/webhooks/deliveries/$w->{id}/retry",
    auth($a->{key}))->{status}, 202, '... a retry now');
ok(wait_for(sub {
    my ($d) = @{ wh_exec_deliveries($t, $a->{key}, $x) // [] };
    return $d && @{ $d->{attempts} } > $n;
}, 15, 0.1), '... it is attempted from its queue');

# once
$t->restart;
my @up = $t->read_log =~ /(upgrading)/g;
is(scalar @up, 1, 'a restart does not upgrade again');
ok($t->verify($a->{org})->{ok}, 'verify after the restart');

$t->done;
$recv->stop;
