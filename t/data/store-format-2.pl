#!/usr/bin/perl
# Writes t/data/store-format-2.dump.gz and .json: a store of format 2 (the
# format before per-account limits), for t/35-store-upgrade.t.  Run it
# with a module built from a commit that writes format 2 (git show
# b1e6a65, say), from the repository's top directory:
#
#   MR_MODULE=/path/to/format-2/ngx_http_modelroute_module.so \
#       perl t/data/store-format-2.pl
#
# What the store holds: two accounts; keys active, revoked and rotated
# (in its grace); an endpoint that answers, one deactivated by a 410 with
# a delivery parked for it, completed executions with results, cancelled
# ones whose webhook_url deliveries succeeded or wait for a retry in ten
# years, live ones; then it is filled up to MDB_MAP_FULL in a 2m map.
# Nothing in it may come due while the test reads it: the recording is
# of one day, the test runs on every day after.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $http = <<'HTTP';
modelroute_store_map_size 2m;
modelroute_store %%STORE%%;
modelroute_webhook_allow_private on;
modelroute_webhook_retry 3650d;
modelroute_webhook_max_age 3650d;
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

my $t = MR::Test->new(http => $http);
$t->start;
my $rc = MR::Receiver->new;
$rc->start;
$rc->set('/gone', status => 410);

my %m;
my $a = $t->new_account(credit => '100.00', name => 'upgrade-a');
my $b = $t->new_account(credit => '50.00', name => 'upgrade-b');
my $ka = $a->{key};
$m{a} = { org => $a->{org}, key => $ka, key_id => $a->{key_id} };
$m{b} = { org => $b->{org}, key => $b->{key} };

my ($kb, $kb_id) = $t->admin_create_key($a->{org}, 'execution');
$t->admin(POST => "/keys/$kb_id/revoke");
my ($kc, $kc_id) = $t->admin_create_key($a->{org}, 'full');
my $rot = $t->req(POST => "/v1/api-keys/$kc_id/rotate", auth($kc))->{json};
$m{a}{revoked} = $kb_id;
$m{a}{rotated} = $kc_id;
$m{a}{successor} = $rot->{key};

my $e1 = wh_create($t, $ka, { url => $rc->url('/e1') })->{json};
my $e2 = wh_create($t, $ka, { url => $rc->url('/gone') })->{json};
$m{a}{e1} = $e1->{id};
$m{a}{e2} = $e2->{id};
$t->req(POST => "/v1/webhooks/endpoints/$e2->{id}/test", auth($ka));
wait_for(sub { !wh_get($t, $ka, $e2->{id})->{is_active} }, 10)
    or die "e2 never deactivated\n";
my $parked = $t->req(POST => "/v1/webhooks/endpoints/$e2->{id}/test",
    auth($ka))->{json}{delivery_id};
$m{a}{parked} = $parked;

my @done = map {
    $t->create_exec($ka, $t->exec_body(model => 'sim-chat'))->{json}{id}
} 1 .. 3;
wait_for(sub {
    !grep { $t->get_exec($ka, $_)->{json}{status} ne 'COMPLETED' } @done
}, 20) or die "not completed\n";
$m{a}{completed} = \@done;

my @ok_hook = map {
    my $x = $t->create_exec($ka, $t->exec_body(
        webhook_url => $rc->url('/wu')))->{json}{id};
    $t->req(POST => "/v1/executions/$x/cancel", auth($ka));
    $x;
} 1 .. 2;
my @dead_hook = map {
    my $x = $t->create_exec($ka, $t->exec_body(
        webhook_url => 'http://127.0.0.1:1/dead'))->{json}{id};
    $t->req(POST => "/v1/executions/$x/cancel", auth($ka));
    $x;
} 1 .. 2;
$m{a}{dead_hook} = \@dead_hook;
$rc->wait_requests(2, path => '/wu');
wait_for(sub {
    !grep {
        my ($d) = @{ wh_exec_deliveries($t, $ka, $_) // [] };
        !$d || !@{ $d->{attempts} };
    } @dead_hook
}, 20) or die "dead hooks not attempted\n";

$m{a}{live} = [ map { $t->create_exec($ka, $t->exec_body)->{json}{id} }
    1 .. 3 ];
$m{b}{live} = [ map { $t->create_exec($b->{key}, $t->exec_body)->{json}{id} }
    1 .. 2 ];

# full: large executions, then test events until MDB_MAP_FULL
my $n = 0;
for my $i (1 .. 500) {
    my $r = $t->create_exec($b->{key}, $t->exec_body(
        input => { prompt => 'x' x 20000, i => $i }));
    last unless $r->{status} == 202;
    $n++;
}
my $tests = 0;
for my $i (1 .. 5000) {
    my $r = $t->req(POST => "/v1/webhooks/endpoints/$e1->{id}/test",
        auth($ka));
    last unless $r->{status} == 202;
    $tests++;
}
$m{large} = $n;
$m{tests} = $tests;
$t->stop;
$rc->stop;

my $dump = `mdb_dump -a ${\ $t->store}`;
die "mdb_dump failed\n" if $? || !length $dump;
my $gz = Compress::Zlib::memGzip($dump);
open my $fh, '>:raw', "$FindBin::Bin/store-format-2.dump.gz" or die $!;
print $fh $gz;
close $fh;
open $fh, '>', "$FindBin::Bin/store-format-2.json" or die $!;
print $fh json_encode(\%m), "\n";
close $fh;
diag "store of format 2: $n large executions, $tests test events, "
    . length($gz) . " bytes gzipped";
ok(1, 'written');
done_testing();
