package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/moderation"
)

// ModeratorSettings are the settings of `audiofan moderator`.
type ModeratorSettings struct {
	SubscriberSettings
	Moderation moderation.Config
}

func (s *ModeratorSettings) validate() error {
	if err := s.SubscriberSettings.validate(); err != nil {
		return err
	}
	return s.Moderation.Validate()
}

var moderatorRole = role{
	service: true,
	name:    "moderator",
	summary: "rules on every call's audio and transcripts that raise events and speak into the call, one replica of many",
	config:  func() any { return &ModeratorSettings{} },
	run: func(ctx context.Context, cfg any, log *slog.Logger, _ io.Writer) error {
		s := cfg.(*ModeratorSettings)
		if s.NATS.URL == "" {
			return errors.New("NATS_URL is empty: the moderator role needs a NATS server (or run `audiofan serve`)")
		}
		return runSubscriber(ctx, s.SubscriberSettings, "", log, moderatorFactory(ctx, s.Moderation, s.Stream.Subjects(), log))
	},
}

// moderatorFactory builds the moderator; its rules file is watched until
// ctx ends, and the cleanup waits for the watcher.
func moderatorFactory(ctx context.Context, cfg moderation.Config, subj broker.Subjects, log *slog.Logger) roleFactory {
	return func(_ context.Context, js jetstream.JetStream, reg prometheus.Registerer) (subscribers.Role, func(), error) {
		m, err := moderation.New(cfg, subj, js, reg, log)
		if err != nil {
			return subscribers.Role{}, nil, err
		}
		rs := m.Rules()
		log.Info("moderation rules", "source", rs.Source, "rules", len(rs.List))
		var wg sync.WaitGroup
		wg.Go(func() { m.Watch(ctx) })
		return m.Role(), wg.Wait, nil
	}
}
