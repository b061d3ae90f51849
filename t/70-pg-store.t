# The PostgreSQL store's configuration and schema (issue 11, items 1 and
# 6), on a private PostgreSQL cluster whatever MR_STORE says:
#  - "modelroute_store" takes a postgresql:// URI or a libpq conninfo;
#    one libpq refuses is refused by nginx -t, with the directive's name,
#    and its text (which may hold a password) is not shown;
#  - nginx -t does not hang on a server that does not answer: it fails
#    within modelroute_store_connect_timeout, saying it cannot connect;
#  - a database that was not migrated, or was migrated by a newer module,
#    is refused with what to do; a worker refuses such a schema on every
#    connection it makes (503 meanwhile), and takes the right one back;
#  - the password may come from libpq's places, not nginx.conf: here
#    PGPASSFILE through "env PGPASSFILE;".
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);

my $t = MR::Test->new(store => 'postgres');
my $ci = $t->conninfo;

sub with_store {
    my ($store, $more) = @_;
    my $http = MR::Test::default_http();
    $http =~ s/%%STORE%%/$store/;
    return ($more // '') . $http;
}

# ---- a connection string libpq refuses
for my $bad ('"host=/tmp nosuchoption=1 password=hunter2"',
             'postgresql://[::1/db?password=hunter2',
             '"postgresql://u:hunter2@h/db?nosuchparameter=1"',
             # libpq quotes the part it refused: here the password
             '"postgresql://u:hunter2%zz@h/db"',
             '"postgresql://u:hunter2%00@h/db"',
             '"host=/tmp password=hunter2 hunter2"')
{
    my $u = MR::Test->new(store => 'postgres', http => with_store($bad));
    my ($rc, $out) = $u->test_config;
    isnt($rc, 0, "refused: $bad");
    like($out, qr/"modelroute_store": not a valid PostgreSQL URI or connection string/,
        '... the message names the directive');
    like($out, qr/nginx\.conf:\d+/, '... and where');
    unlike($out, qr/hunter2/, '... without the password');
    like($out, qr/invalid connection option "nosuchoption"/,
        '... naming the parameter it does not know')
        if $bad =~ /nosuchoption/;
}

# ---- a server that does not answer: no hang
{
    my $port = MR::Test::free_port();    # nobody listens there
    my $u = MR::Test->new(store => 'postgres',
        http => with_store("\"host=127.0.0.1 port=$port user=postgres "
            . "dbname=x\"", "modelroute_store_connect_timeout 2s;\n"));
    my $t0 = time;
    my ($rc, $out) = $u->test_config;
    my $took = time - $t0;
    isnt($rc, 0, 'nobody there: nginx -t fails');
    like($out, qr/modelroute_store: PostgreSQL .*cannot connect/,
        '... saying it cannot connect');
    cmp_ok($took, '<', 30, '... without hanging') or diag "took $took s";
}

# ---- a database without the schema, and one of a newer module
{
    MR::Test::pg_sql('postgres', 'CREATE DATABASE mr_empty');
    (my $empty = $ci) =~ s/dbname=\S+/dbname=mr_empty/;
    my $u = MR::Test->new(store => 'postgres',
        http => with_store("\"$empty\""));
    my ($rc, $out) = $u->test_config;
    isnt($rc, 0, 'not migrated: refused');
    like($out, qr/has no ModelRoute schema: apply it with tools\/pg-migrate/,
        '... saying how to migrate it');

    $t->psql('INSERT INTO mr_schema (version) VALUES (99)');
    ($rc, $out) = $t->test_config;
    isnt($rc, 0, 'a newer schema: refused');
    like($out, qr/schema version 99, this module needs version \d+: it was migrated by a newer module/,
        '... saying so');
    $t->psql('DELETE FROM mr_schema WHERE version = 99');
    ($rc, $out) = $t->test_config;
    is($rc, 0, 'the right schema: nginx -t is happy') or diag $out;
}

# ---- the workers check it on every connection
$t->start;
my $acc = $t->new_account(credit => '5.00');
is($t->create_exec($acc->{key}, $t->exec_body)->{status}, 202,
    'running: a create works');

$t->psql('INSERT INTO mr_schema (version) VALUES (99)');
$t->psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    . "WHERE application_name = 'modelroute'");
my $r = wait_for(sub {
    my $r = $t->create_exec($acc->{key}, $t->exec_body);
    $r->{status} == 503 ? $r : undef;
}, 20, 0.2);
ok($r, 'the schema changed under the workers: 503');
is_error($r, 503, 'SERVICE_UNAVAILABLE', '... the envelope') if $r;
ok(wait_for(sub { $t->read_log =~ /schema version 99.*needs version/ }, 10),
    '... and the workers say why');
is($t->get_exec($acc->{key}, 'exec_' . '0' x 44)->{status}, 503,
    '... reads too');

$t->psql('DELETE FROM mr_schema WHERE version = 99');
ok(wait_for(sub {
    $t->create_exec($acc->{key}, $t->exec_body)->{status} == 202 }, 20, 0.2),
    'the schema is back: creates work again');
ok($t->verify($acc->{org})->{ok}, 'verify ok');
$t->stop;

# ---- modelroute_key_cache: a worker reuses the keys it read, for a while
{
    for my $bad ('61s', 'soon') {
        my $u = MR::Test->new(store => 'postgres',
            extra_http => "modelroute_key_cache $bad;\n");
        my ($rc, $out) = $u->test_config;
        isnt($rc, 0, "modelroute_key_cache $bad: refused");
        like($out, qr/"modelroute_key_cache" takes a time up to 60s, or off/,
            '... saying what it takes');
    }

    my $k = MR::Test->new(store => 'postgres',
        extra_http => "modelroute_key_cache 2s;\n");
    $k->start;
    my $a = $k->new_account(credit => '5.00');
    my $b = $k->new_account(credit => '5.00');
    # both workers read both keys (most likely: 20 requests each)
    for (1 .. 20) {
        $k->req(GET => '/v1/balance', auth($_)) for $a->{key}, $b->{key};
    }

    # revoked through this node: the worker that revoked it forgets it at
    # once, the other one within the cache's time
    my $kid = $k->admin(GET => "/accounts/$a->{org}/keys")->{json}{data}[0]{id};
    is($k->admin(POST => "/keys/$kid/revoke")->{status}, 200, 'a key revoked');
    my $t0 = time;
    ok(wait_for(sub { !grep { $k->req(GET => '/v1/balance', auth($a->{key}))
        ->{status} != 401 } 1 .. 4 }, 10, 0.1),
        'revoked: refused everywhere');
    cmp_ok(time - $t0, '<', 2 + 1.5, '... within the cache\'s time');

    # removed behind the workers' backs (another node, say): still
    # answered from the cache, then refused
    $k->req(GET => '/v1/balance', auth($b->{key})) for 1 .. 20;
    $k->psql("DELETE FROM mr_keys WHERE org = '$b->{org}'");
    $t0 = time;
    my $first = $k->req(GET => '/v1/balance', auth($b->{key}))->{status};
    is($first, 200, 'a key removed in the database: still taken (cached)');
    ok(wait_for(sub { !grep { $k->req(GET => '/v1/balance', auth($b->{key}))
        ->{status} != 401 } 1 .. 4 }, 10, 0.1),
        '... then refused');
    cmp_ok(time - $t0, '<', 2 + 1.5, '... once the cache\'s time is over');
    $k->stop;
    $k->check_log;
}

# ---- the password from a file libpq reads, not from nginx.conf
{
    my $pass = $t->prefix . '/pgpass';
    my $u = MR::Test->new(store => 'postgres', env => { PGPASSFILE => $pass },
        http => with_store('"' . $t->conninfo . '"'));

    $t->psql("ALTER USER postgres PASSWORD 'pw-in-a-file'");
    my $pg = MR::Test::pg_cluster();
    my $hba = "$pg->{dir}/data/pg_hba.conf";
    open my $fh, '>', $hba or die "$hba: $!";
    print $fh "local all all scram-sha-256\n";
    close $fh;
    MR::Test::pg_ctl('reload');

    open $fh, '>', $pass or die "$pass: $!";
    print $fh "*:*:*:postgres:pw-in-a-file\n";
    close $fh;
    chmod 0600, $pass;
    # the workers (nobody) read it too
    chown((getpwnam 'nobody')[2], -1, $pass) if $> == 0;

    unlike($u->config_text, qr/pw-in-a-file/, 'no password in nginx.conf');
    $u->start;
    my $a2 = $u->new_account(credit => '1.00');
    is($u->create_exec($a2->{key}, $u->exec_body)->{status}, 202,
        'PGPASSFILE: the workers connect');
    $u->stop;
    $u->check_log;

    open $fh, '>', $hba or die "$hba: $!";
    print $fh "local all all trust\n";
    close $fh;
    MR::Test::pg_ctl('reload');
}

$t->done;
